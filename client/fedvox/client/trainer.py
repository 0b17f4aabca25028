"""Local training and evaluation, behind a MONAI-shaped Trainer interface."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric

from fedvox.client.checks import check_site
from fedvox.client.data import (
    Case,
    evaluation_dataset,
    round_batches,
    training_dataset,
)
from fedvox.client.hooks import (
    SCAFFOLD_C,
    SCAFFOLD_DC,
    SchemeHooks,
    SchemeTraining,
    personal_keys,
)
from fedvox.client.model import build_model
from fedvox.client.site_state import SiteState
from fedvox.client.weights import to_numpy, to_torch
from fedvox.wire.taskconfig import TaskConfig, TrainSettings
from fedvox.wire.tensors import StateDict

log = logging.getLogger(__name__)
Progress = Callable[[float], None]


class TaskAborted(Exception):
    """The server asked the site to drop its task."""


@dataclass(frozen=True)
class TrainResult:
    weights: StateDict  # the shared keys only: personal layers never leave the site
    num_examples: int
    local_steps: int
    metrics: dict[str, float]
    extras: StateDict = field(default_factory=dict)  # scheme tensors to upload (SCAFFOLD dc)


class Trainer(ABC):
    """What a site does with weights. The runner handles the wire; this handles the model."""

    # polled between steps; the runner points it at the heartbeat's abort flag
    abort_requested: Callable[[], bool] = staticmethod(lambda: False)

    @abstractmethod
    def initial_weights(self, config: TaskConfig) -> StateDict:
        """Build the model from the spec with the run's seed and return its weights."""

    @abstractmethod
    def train(
        self,
        weights: StateDict,
        config: TaskConfig,
        round_: int,
        progress: Progress,
        extras: StateDict | None = None,
    ) -> TrainResult:
        """Train from `weights` (and the scheme's `extras`) for the configured local steps."""

    @abstractmethod
    def evaluate(
        self, weights: StateDict, config: TaskConfig, split: str, round_: int
    ) -> dict[str, float]:
        """Metrics of `weights` (with the site's state as of `round_`) on a local split."""

    @property
    @abstractmethod
    def num_examples(self) -> int:
        """Training examples the site holds (FedAvg's weight)."""

    def site_info(self) -> dict[str, str]:
        """Facts for the server at registration: data summary statistics, data problems."""
        return {}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _site_seed(site_id: str, seed: int, round_: int) -> int:
    # zlib.crc32 is stable across processes, unlike hash()
    return (zlib.crc32(site_id.encode()) + 1_000_003 * seed + 7919 * round_) % (2**31)


class MonaiTrainer(Trainer):
    """A MONAI 3D UNet trained with DiceCE on lesion-balanced patches of the site's CT."""

    def __init__(
        self,
        site_id: str,
        data_root: Path,
        device: torch.device,
        cache_rate: float = 1.0,
        state: SiteState | None = None,
    ) -> None:
        self.site_id = site_id
        self.state = state or SiteState(Path("fedvox-site-state") / site_id)
        self.device = device
        self.cache_rate = cache_rate
        # the data check runs before round 1; its summary (never voxels) goes to the server
        self.data_report = check_site(data_root)
        self.datalist = self.data_report.datalist  # empty when the check found a problem
        self._train_set: tuple[TrainSettings, Dataset] | None = None
        self._eval_sets: dict[tuple[str, TrainSettings], object] = {}

    @property
    def num_examples(self) -> int:
        return len(self.datalist["training"])

    def site_info(self) -> dict[str, str]:
        return self.data_report.info()

    def _model(
        self, config: TaskConfig, weights: StateDict, state_round: int
    ) -> tuple[torch.nn.Module, set[str]]:
        """The global weights plus this site's personal layers as of `state_round`."""
        torch.manual_seed(config.train.seed)  # personal layers start as at initialisation
        model = build_model(config.model)
        personal = personal_keys(model, SchemeHooks.from_config(config.strategy))
        expected = set(model.state_dict()) - personal
        if set(weights) != expected:
            missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise ValueError(f"global model does not fit: missing {missing[:3]}, extra {extra[:3]}")
        state = to_torch(weights)
        if personal:
            state.update(to_torch(self.state.load("personal", state_round) or {}))
        model.load_state_dict(state, strict=False)
        model = model.to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        return model, personal

    def initial_weights(self, config: TaskConfig) -> StateDict:
        torch.manual_seed(config.train.seed)
        model = build_model(config.model)
        personal = personal_keys(model, SchemeHooks.from_config(config.strategy))
        return {k: v for k, v in to_numpy(model.state_dict()).items() if k not in personal}

    def _train_batches(
        self, settings: TrainSettings, round_: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        # keep the cached dataset across rounds: only the first epoch reads the files
        if self._train_set is None or self._train_set[0] != settings:
            cases = self.datalist["training"]
            self._train_set = (settings, training_dataset(cases, settings, self.cache_rate))
        return round_batches(
            self._train_set[1], settings, _site_seed(self.site_id, settings.seed, round_)
        )

    def train(
        self,
        weights: StateDict,
        config: TaskConfig,
        round_: int,
        progress: Progress,
        extras: StateDict | None = None,
    ) -> TrainResult:
        settings = config.train
        model, personal = self._model(config, weights, round_ - 1)
        torch.manual_seed(_site_seed(self.site_id, settings.seed, round_))
        model.train()
        hooks = SchemeHooks.from_config(config.strategy)
        lr = hooks.lr or settings.lr
        scheme = SchemeTraining(
            hooks,
            model,
            self._control(extras or {}, hooks),
            self._device_tensors(self.state.load("scaffold_ci", round_ - 1) or {}),
            lr,
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        if hooks.scaffold or settings.optimizer == "sgd":
            # SCAFFOLD's c_i update assumes plain SGD steps of size lr: no momentum there
            momentum = 0.0 if hooks.scaffold else 0.9
            optimizer = torch.optim.SGD(
                trainable, lr=lr, momentum=momentum, weight_decay=settings.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=settings.weight_decay)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        amp = settings.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        batches = self._train_batches(settings, round_)
        losses: list[float] = []
        started = time.monotonic()
        for step in range(settings.local_steps):
            if self.abort_requested():
                raise TaskAborted(f"round {round_} aborted by the server at step {step}")
            batch = next(batches)
            image, label = self._inputs(batch["image"]), batch["label"].to(self.device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(image), label)
                penalty = scheme.penalty()
                total = loss if penalty is None else loss + penalty
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)  # gradients at their true scale for SCAFFOLD's correction
            scheme.correct_gradients()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            progress((step + 1) / max(settings.local_steps, 1))
        elapsed = time.monotonic() - started
        metrics = {
            "train_loss": float(np.mean(losses)) if losses else 0.0,
            "train_seconds": elapsed,
        }
        if settings.local_steps:
            metrics["volumes_per_second"] = settings.local_steps * settings.batch_size / elapsed
        state = to_numpy(model.state_dict())
        if personal:
            self.state.save("personal", round_, {k: state[k] for k in personal})
        upload_extras: StateDict = {}
        if hooks.scaffold:
            site_control = scheme.new_site_control(settings.local_steps)
            self.state.save("scaffold_ci", round_, to_numpy(site_control))
            # every float tensor the server controls gets a dc; buffers (no gradient) get 0
            upload_extras = {
                SCAFFOLD_DC + k[len(SCAFFOLD_C) :]: np.zeros_like(v)
                for k, v in (extras or {}).items()
                if k.startswith(SCAFFOLD_C)
            }
            upload_extras.update(
                to_numpy({SCAFFOLD_DC + k: v - scheme.c_i[k] for k, v in site_control.items()})
            )
        shared = {k: v for k, v in state.items() if k not in personal}
        return TrainResult(shared, self.num_examples, settings.local_steps, metrics, upload_extras)

    def _device_tensors(self, arrays: StateDict) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in to_torch(arrays).items()}

    def _control(self, extras: StateDict, hooks: SchemeHooks) -> dict[str, torch.Tensor]:
        """SCAFFOLD's server control c, from the tensors published with the model."""
        if not hooks.scaffold:
            return {}
        return self._device_tensors(
            {k[len(SCAFFOLD_C) :]: v for k, v in extras.items() if k.startswith(SCAFFOLD_C)}
        )

    def _inputs(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return image

    def evaluate(
        self, weights: StateDict, config: TaskConfig, split: str, round_: int
    ) -> dict[str, float]:
        cases = self.datalist.get(split, [])
        if not cases:
            return {}
        model, _ = self._model(config, weights, round_)
        model.eval()
        dataset = self._eval_set(split, cases, config.train)
        metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        roi = [config.train.patch_size] * 3
        amp = config.train.amp and self.device.type == "cuda"
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext(),
        ):
            for i in range(len(dataset)):  # type: ignore[arg-type]
                item = dataset[i]  # type: ignore[index]
                image = self._inputs(item["image"][None])
                logits = sliding_window_inference(image, roi, 2, model, overlap=0.25)
                assert isinstance(logits, torch.Tensor)
                pred = torch.nn.functional.one_hot(logits.argmax(1), 2).permute(0, 4, 1, 2, 3)
                truth = torch.nn.functional.one_hot(
                    item["label"][None, 0].long().to(self.device), 2
                ).permute(0, 4, 1, 2, 3)
                metric(y_pred=pred, y=truth)
        scores = metric.aggregate().flatten().tolist()
        dice = [s for s in scores if not math.isnan(s)]  # cases with no lesion have no Dice
        prefix = "val" if split == "validation" else split
        out = {f"{prefix}_cases": float(len(cases))}
        if dice:
            out[f"{prefix}_dice"] = float(np.mean(dice))
        return out

    def _eval_set(self, split: str, cases: list[Case], settings: TrainSettings) -> object:
        key = (split, settings)
        if key not in self._eval_sets:
            self._eval_sets[key] = evaluation_dataset(cases, settings, self.cache_rate)
        return self._eval_sets[key]
