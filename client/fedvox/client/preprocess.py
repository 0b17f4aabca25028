"""CT preprocessing as MONAI dictionary transforms, the same at every site.

Deterministic part (cached by the datasets, so only the first epoch pays for it):
read (NIfTI or DICOM, in HU) -> RAS -> resample to `train.spacing` (if set) -> crop to the head
-> pad to the patch size with air -> precompute lesion/background voxel indices.

Random part (training only): lesion/background-balanced patches (background centres inside the
head, not in the air around it) -> CT-suitable augmentation in HU -> windows.

Augmentation works in Hounsfield units before windowing, so every range means something physical:
a calibration offset of a few HU (scanners and kVp differ), quantum noise of a few HU (dose),
a slightly softer reconstruction kernel (blur), left-right flips (heads are nearly symmetric) and
small rotations and zooms (positioning, head size). Nothing rescales contrast: in CT the same HU
is the same tissue everywhere, which is what the fixed windows rely on.

Windows: the brain window (`train.window_min`..`window_max`) is channel 0 and each of
`train.extra_windows` (e.g. subdural -20..180, bone -800..2000) adds a channel, every one clipped
and scaled to [0, 1]. The model must then have `model.in_channels = 1 + len(extra_windows)`;
`fedvox.wire.taskconfig.check_channels` refuses a configuration where they differ.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandShiftIntensityd,
    Spacingd,
    SpatialPadd,
)

from fedvox.client.checks import HEAD_HU
from fedvox.client.dicom import AIR_HU
from fedvox.client.volume import read_nifti, read_volume
from fedvox.wire.taskconfig import TrainSettings

KEYS = ("image", "label")
INDEX_KEYS = ("label_fg_indices", "label_bg_indices")
HEAD_MARGIN = 4  # voxels kept around the head by the foreground crop


def windows(settings: TrainSettings) -> list[tuple[float, float]]:
    """The HU windows, one per input channel; the brain window first."""
    extra = [(float(w[0]), float(w[1])) for w in settings.extra_windows]
    return [(settings.window_min, settings.window_max), *extra]


class LoadCTd(MapTransform):  # type: ignore[misc]
    """Read the image (HU) and label into channel-first MetaTensors carrying their RAS affine.

    Voxels darker than air (padding such as -2000 or -3024 HU outside the scan circle) become
    air, so that resampling near the circle's edge does not smear fill values into the head.
    """

    def __init__(self) -> None:
        super().__init__(keys=KEYS)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = read_volume(Path(str(data["image"])))
        out["image"] = _meta_tensor(np.maximum(image.array, AIR_HU), image.affine, image.source)
        label = read_nifti(Path(str(data["label"])))
        out["label"] = _meta_tensor(label.array, label.affine, label.source)
        return out


def _meta_tensor(array: np.ndarray[Any, Any], affine: np.ndarray[Any, Any], source: str) -> Any:
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array[None], dtype=np.float32)),
        affine=torch.from_numpy(affine),
        meta={"filename_or_obj": source},
    )


class CTWindowsd(MapTransform):  # type: ignore[misc]
    """HU image (1 channel) -> one [0, 1] channel per window, clipped outside it."""

    def __init__(self, key: str, hu_windows: Sequence[tuple[float, float]]) -> None:
        super().__init__(keys=[key])
        self.hu_windows = list(hu_windows)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            hu = out[key][:1]
            out[key] = torch.cat(
                [((hu - lo) / (hi - lo)).clamp(0.0, 1.0) for lo, hi in self.hu_windows]
            )
        return out


def _is_head(hu: torch.Tensor) -> torch.Tensor:
    return hu > HEAD_HU


def deterministic(settings: TrainSettings) -> list[Any]:
    """Read, reorient, resample, crop to the head, pad: the part the datasets cache."""
    steps: list[Any] = [LoadCTd(), Orientationd(keys=KEYS, axcodes="RAS")]
    if settings.spacing:
        steps.append(Spacingd(keys=KEYS, pixdim=settings.spacing, mode=("bilinear", "nearest")))
    patch = [settings.patch_size] * 3
    steps += [
        # allow_smaller: a margin beyond the volume's edge is not padded (MONAI would pad 0 HU)
        CropForegroundd(
            keys=KEYS,
            source_key="image",
            select_fn=_is_head,
            margin=HEAD_MARGIN,
            allow_smaller=True,
        ),
        SpatialPadd(keys="image", spatial_size=patch, value=AIR_HU),
        SpatialPadd(keys="label", spatial_size=patch),
    ]
    return steps


def evaluation(settings: TrainSettings) -> list[Any]:
    return [
        *deterministic(settings),
        CTWindowsd("image", windows(settings)),
        EnsureTyped(keys=KEYS, track_meta=False),
    ]


def training(settings: TrainSettings) -> list[Any]:
    patch = [settings.patch_size] * 3
    steps: list[Any] = [
        *deterministic(settings),
        # cached with the volume: the crop need not search the whole volume for every patch
        FgBgToIndicesd(keys="label", image_key="image", image_threshold=HEAD_HU),
        RandCropByPosNegLabeld(
            keys=KEYS,
            label_key="label",
            spatial_size=patch,
            pos=1,
            neg=1,
            num_samples=1,
            fg_indices_key=INDEX_KEYS[0],
            bg_indices_key=INDEX_KEYS[1],
        ),
        DeleteItemsd(keys=list(INDEX_KEYS)),  # variable-length: the loader cannot batch them
    ]
    if settings.augment:
        steps += augmentation()
    return [
        *steps,
        CTWindowsd("image", windows(settings)),
        EnsureTyped(keys=KEYS, track_meta=False),
    ]


def augmentation() -> list[Any]:
    """Random CT augmentations on an HU patch (see the module docstring for the why)."""
    return [
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),  # left-right
        RandAffined(
            keys=KEYS,
            prob=0.2,
            rotate_range=(0.1, 0.1, 0.26),  # radians: about 6 degrees, 15 in the axial plane
            scale_range=(0.1, 0.1, 0.1),
            mode=("bilinear", "nearest"),
            padding_mode="border",
        ),
        RandShiftIntensityd(keys="image", offsets=10.0, prob=0.3),  # HU calibration
        RandGaussianNoised(keys="image", std=6.0, prob=0.2),  # HU of quantum noise
        RandGaussianSmoothd(
            keys="image",
            sigma_x=(0.25, 0.75),
            sigma_y=(0.25, 0.75),
            sigma_z=(0.25, 0.75),
            prob=0.15,
        ),
    ]
