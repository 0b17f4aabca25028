"""The model and training settings the server sends to every site with a task.

The server owns these (so every site builds the same network and trains the
same way) but never imports torch: it only validates and forwards them as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

NORMS = ("instance", "batch")


@dataclass(frozen=True)
class ModelSpec:
    """A MONAI 3D UNet. Norm layers are learnable (affine) so FedBN/FedPer have keys to keep."""

    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "instance"
    in_channels: int = 1
    out_channels: int = 2
    dropout: float = 0.0

    def validate(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"model.strides needs {len(self.channels) - 1} entries "
                f"(one fewer than model.channels), got {len(self.strides)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if min(self.channels) < 1 or self.out_channels < 2:
            raise ValueError("model.channels must be positive and model.out_channels >= 2")


@dataclass(frozen=True)
class TrainSettings:
    """Local training on a site, per round."""

    local_steps: int = 20
    batch_size: int = 2
    patch_size: int = 48
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    amp: bool = True  # only takes effect on CUDA
    window_min: float = 0.0  # brain window in HU, mapped to [0, 1]
    window_max: float = 80.0
    # more HU windows (min, max), e.g. [[-20, 180], [-800, 2000]] for subdural and bone: each adds
    # an input channel after the brain window, so model.in_channels = 1 + len(extra_windows)
    extra_windows: tuple[tuple[float, ...], ...] = ()
    spacing: tuple[float, ...] = ()  # resample to (x, y, z) mm; () keeps each site's own voxels
    augment: bool = True  # CT augmentations in HU (see fedvox.client.preprocess)
    seed: int = 0

    def validate(self) -> None:
        if self.local_steps < 0 or self.batch_size < 1 or self.patch_size < 16:
            raise ValueError(
                "train.local_steps >= 0, train.batch_size >= 1 and "
                "train.patch_size >= 16 are required"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"train.optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.window_max <= self.window_min:
            raise ValueError("train.window_max must exceed train.window_min")
        if any(len(w) != 2 or w[1] <= w[0] for w in self.extra_windows):
            raise ValueError("train.extra_windows must be [min, max] pairs with max > min")
        if self.spacing and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError("train.spacing must be three positive mm, or empty")


def check_channels(model: ModelSpec, train: TrainSettings) -> None:
    """Each HU window is an input channel: the model must take exactly that many."""
    windows = 1 + len(train.extra_windows)
    if model.in_channels != windows:
        raise ValueError(
            f"model.in_channels is {model.in_channels} but train.extra_windows gives {windows} "
            "input channels (the brain window plus each extra window): set them to agree"
        )


@dataclass(frozen=True)
class TaskConfig:
    """Everything in a Task's config_json."""

    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSettings = field(default_factory=TrainSettings)
    splits: tuple[str, ...] = ("validation",)  # what EVALUATE reports on
    strategy: dict[str, Any] = field(default_factory=dict)  # client-side hooks of a scheme

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> TaskConfig:
        raw = json.loads(text)
        spec: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw.get("model", {}).items()
        }
        model = ModelSpec(**spec)
        train = TrainSettings(**{k: _tuples(v) for k, v in raw.get("train", {}).items()})
        return TaskConfig(
            model=model,
            train=train,
            splits=tuple(raw.get("splits", ("validation",))),
            strategy=dict(raw.get("strategy", {})),
        )


def _tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples, so settings stay hashable."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
