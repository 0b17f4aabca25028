"""A site's CT volumes as MONAI datasets: the datalist and the cached training/evaluation sets.

Where the pieces live: `layout` finds the cases (dataset.json or imagesTr/), `volume` and `dicom`
read NIfTI and DICOM series into HU, `preprocess` holds the transforms, `checks` vets a site and
gives the trainer its datalist.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose

from fedvox.client import preprocess
from fedvox.client.layout import SPLITS, Case
from fedvox.client.volume import DataError
from fedvox.wire.taskconfig import TrainSettings

__all__ = [
    "SPLITS",
    "Case",
    "DataError",
    "evaluation_dataset",
    "round_batches",
    "training_dataset",
]


def training_dataset(cases: list[Case], settings: TrainSettings, cache_rate: float) -> Dataset:
    """The cached training set.

    CacheDataset keeps each volume after the deterministic transforms (read, reorient, resample,
    crop, pad), so epochs after the first neither re-read nor re-resample the files.
    """
    transform = Compose(preprocess.training(settings))
    return CacheDataset(cases, transform, cache_rate=cache_rate, num_workers=0, progress=False)


def round_batches(
    dataset: Dataset, settings: TrainSettings, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless lesion/background-balanced, augmented random patches, a pure function of `seed`.

    The trainer reseeds per round (rather than continuing one stream), so a round that is
    run again after a restart sees exactly the same patches.
    """
    transform = dataset.transform
    assert isinstance(transform, Compose)
    transform.set_random_state(seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )
    while True:
        yield from loader


def evaluation_dataset(cases: list[Case], settings: TrainSettings, cache_rate: float) -> Dataset:
    return CacheDataset(
        cases,
        Compose(preprocess.evaluation(settings)),
        cache_rate=cache_rate,
        num_workers=0,
        progress=False,
    )
