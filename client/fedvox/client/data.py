"""A site's CT volumes: the MSD-style datalist and the MONAI transforms for CT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from fedvox.wire.taskconfig import TrainSettings

SPLITS = ("training", "validation", "test")
Case = dict[str, str]


class DataError(ValueError):
    """A problem with a site's data; the message names the file."""


def load_datalist(root: Path) -> dict[str, list[Case]]:
    """Read <root>/dataset.json and resolve every image/label path, checking they exist."""
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: a site needs an MSD-style dataset.json") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    out: dict[str, list[Case]] = {}
    for split in SPLITS:
        cases = []
        for entry in meta.get(split, []):
            case = {k: str((root / entry[k]).resolve()) for k in ("image", "label") if k in entry}
            for file in case.values():
                if not Path(file).is_file():
                    raise DataError(f"{path}: {split} lists {file}, which does not exist")
            cases.append(case)
        out[split] = cases
    if not out["training"]:
        raise DataError(f"{path} lists no training cases")
    return out


def _base_transforms(settings: TrainSettings) -> list[object]:
    return [
        LoadImaged(keys=["image", "label"], image_only=True),
        EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        # brain window: HU in [window_min, window_max] -> [0, 1], clipped outside
        ScaleIntensityRanged(
            keys="image",
            a_min=settings.window_min,
            a_max=settings.window_max,
            b_min=0.0,
            b_max=1.0,
            clip=True,
        ),
        SpatialPadd(keys=["image", "label"], spatial_size=[settings.patch_size] * 3),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]


def training_batches(
    cases: list[Case], settings: TrainSettings, cache_rate: float, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of lesion/background-balanced random patches."""
    random = [
        RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=[settings.patch_size] * 3,
            pos=1,
            neg=1,
            num_samples=1,
        ),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),  # heads are ~symmetric
    ]
    transform = Compose([*_base_transforms(settings), *random]).set_random_state(seed=seed)
    dataset = CacheDataset(cases, transform, cache_rate=cache_rate, num_workers=0, progress=False)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=0,
        generator=generator,
        drop_last=False,
    )
    while True:
        yield from loader


def evaluation_dataset(cases: list[Case], settings: TrainSettings, cache_rate: float) -> Dataset:
    return CacheDataset(
        cases,
        Compose(_base_transforms(settings)),
        cache_rate=cache_rate,
        num_workers=0,
        progress=False,
    )
