"""CT preprocessing: windows, reorientation, resampling, head crop, air padding, balanced
patches, aligned augmentation and caching, on hand-made volumes with numbers worked out here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from fedvox.client import preprocess
from fedvox.client.data import evaluation_dataset, round_batches, training_dataset
from fedvox.client.volume import read_volume
from fedvox.synth.writer import write_nifti
from fedvox.wire.taskconfig import ModelSpec, TaskConfig, TrainSettings, check_channels
from tests.ctdata import box_head, ras_affine

SETTINGS = TrainSettings(patch_size=16, batch_size=2, augment=False)
# a window that keeps HU readable: value = (HU + 1000) / 2000
WIDE = dataclasses.replace(SETTINGS, window_min=-1000.0, window_max=1000.0)
LESION = (slice(10, 14), slice(22, 26), slice(8, 12))  # off-centre, so flips would show


def lesion_head() -> tuple[np.ndarray, np.ndarray]:
    hu, label = box_head((40, 40, 24), lesion=False)
    hu[LESION], label[LESION] = 70, 1
    return hu, label


def write(root: Path, name: str, hu: np.ndarray, label: np.ndarray, affine: np.ndarray) -> Any:
    case = {"image": str(root / f"{name}_img.nii.gz"), "label": str(root / f"{name}_lbl.nii.gz")}
    write_nifti(Path(case["image"]), hu, affine)
    write_nifti(Path(case["label"]), label, affine)
    return case


def to_hu(value: torch.Tensor) -> torch.Tensor:
    return value * 2000.0 - 1000.0


def test_windows_become_channels() -> None:
    hu = torch.tensor([[-1000.0, 0.0, 40.0, 80.0, 100.0, 2000.0]])
    out = preprocess.CTWindowsd("image", [(0, 80), (-20, 180), (-800, 2000)])({"image": hu})
    expected = [
        [0, 0, 0.5, 1, 1, 1],
        [0, 0.1, 0.3, 0.5, 0.6, 1],
        [0, 800 / 2800, 840 / 2800, 880 / 2800, 900 / 2800, 1],
    ]
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-6)


def test_extra_windows_set_the_channel_count_and_must_match_the_model(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, extra_windows=((-20.0, 180.0), (-800.0, 2000.0)))
    case = write(tmp_path, "a", *lesion_head(), ras_affine((2.0, 2.0, 2.0)))
    assert evaluation_dataset([case], settings, 1.0)[0]["image"].shape[0] == 3
    check_channels(ModelSpec(in_channels=3), settings)
    with pytest.raises(ValueError, match=r"model\.in_channels is 1 but .* gives 3 input channels"):
        check_channels(ModelSpec(), settings)
    config = TaskConfig(train=settings)
    assert TaskConfig.from_json(config.to_json()) == config  # lists come back as tuples
    hash(TaskConfig.from_json(config.to_json()).train)


def test_evaluation_crops_the_head_and_keeps_lps_input_in_ras(tmp_path: Path) -> None:
    hu, label = lesion_head()
    ras = write(tmp_path, "ras", hu, label, ras_affine((2.0, 2.0, 2.0)))
    lps_affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps_affine[:2, 3] = 78.0  # voxel 39 of the flipped array sits where voxel 0 sat
    lps = write(tmp_path, "lps", hu[::-1, ::-1].copy(), label[::-1, ::-1].copy(), lps_affine)
    out = [evaluation_dataset([c], WIDE, 1.0)[0] for c in (ras, lps)]
    # head: voxels 6..33 in x and y, 4..19 in z; margin 4 -> 2..37 (36) and 0..23 (24)
    assert out[0]["image"].shape == (1, 36, 36, 24)
    np.testing.assert_array_equal(out[0]["image"], out[1]["image"])
    np.testing.assert_array_equal(out[0]["label"], out[1]["label"])
    lesion = np.argwhere(out[1]["label"][0].numpy() > 0)
    np.testing.assert_array_equal(lesion.min(0), [10 - 2, 22 - 2, 8])
    np.testing.assert_array_equal(lesion.max(0), [13 - 2, 25 - 2, 11])
    hu_out = to_hu(out[0]["image"][0])
    assert hu_out[16, 16, 12] == pytest.approx(35.0)  # brain
    assert hu_out[0, 0, 0] == pytest.approx(-1000.0)  # air kept by the margin


def test_resampling_to_the_configured_spacing(tmp_path: Path) -> None:
    case = write(tmp_path, "a", *lesion_head(), ras_affine((2.0, 2.0, 2.0)))
    settings = dataclasses.replace(WIDE, spacing=(4.0, 4.0, 4.0))
    item = Compose(preprocess.deterministic(settings))(dict(case))
    np.testing.assert_allclose(item["image"].affine.diagonal()[:3], [4.0, 4.0, 4.0])
    # 40 voxels of 2 mm -> 20 of 4 mm; the head (6..33 at 2 mm) is 3..16, cropped with margin 4
    assert tuple(item["image"].shape) == (1, 20, 20, 16)  # z: 12 voxels of 4 mm, padded to 16
    assert set(np.unique(item["label"].numpy())) == {0.0, 1.0}  # nearest: still a label map
    assert int(item["label"].sum()) == 8  # the 4x4x4 lesion at 2 mm is 2x2x2 at 4 mm


def test_small_volumes_are_padded_with_air(tmp_path: Path) -> None:
    hu = np.full((10, 10, 10), 35, np.int16)  # no air at all: the crop keeps everything
    case = write(tmp_path, "a", hu, np.zeros_like(hu, np.uint8), ras_affine((1.0, 1.0, 1.0)))
    item = Compose(preprocess.deterministic(SETTINGS))(dict(case))
    assert tuple(item["image"].shape) == (1, 16, 16, 16)
    assert item["image"][0, 0, 0, 0] == -1024.0 and item["image"][0, 8, 8, 8] == 35.0


def patches(tmp_path: Path, settings: TrainSettings, count: int, seed: int = 0) -> list[Any]:
    case = write(tmp_path, "a", *lesion_head(), ras_affine((2.0, 2.0, 2.0)))
    batches = round_batches(training_dataset([case], settings, 1.0), settings, seed)
    return [next(batches) for _ in range(count)]


def test_patches_are_lesion_background_balanced_and_background_is_head(tmp_path: Path) -> None:
    batches = patches(tmp_path, dataclasses.replace(WIDE, batch_size=1), 40)
    centre = [(b["image"][0, 0, 8, 8, 8], b["label"][0, 0, 8, 8, 8]) for b in batches]
    positive = sum(int(label) for _, label in centre)
    assert 12 <= positive <= 28, positive  # pos=1, neg=1
    assert all(to_hu(image) > -500 for image, label in centre if not label)  # never the air


def test_same_seed_same_patches(tmp_path: Path) -> None:
    settings = dataclasses.replace(SETTINGS, augment=True)
    first, again = patches(tmp_path, settings, 3), patches(tmp_path, settings, 3)
    other = patches(tmp_path, settings, 3, seed=1)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))


def test_augmentation_keeps_image_and_label_aligned(tmp_path: Path) -> None:
    settings = dataclasses.replace(WIDE, augment=True, batch_size=1)
    lesion_hu, brain_hu = [], []
    for batch in patches(tmp_path, settings, 30):
        hu, label = to_hu(batch["image"][0, 0]), batch["label"][0, 0]
        inside = (hu > 0) & (hu < 200)
        lesion_hu += hu[(label > 0) & inside].tolist()
        brain_hu += hu[(label == 0) & inside].tolist()
    # lesion 70 HU, brain 35 HU, before noise (sd 6), blur and shifts (+-10 HU)
    assert np.mean(lesion_hu) > np.mean(brain_hu) + 15, (np.mean(lesion_hu), np.mean(brain_hu))
    assert 25 < np.median(brain_hu) < 45


def test_the_cache_reads_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [write(tmp_path, n, *lesion_head(), ras_affine((2.0, 2.0, 2.0))) for n in "ab"]
    reads: list[Path] = []
    original = read_volume

    def counting(path: Path) -> Any:
        reads.append(path)
        return original(path)

    monkeypatch.setattr("fedvox.client.preprocess.read_volume", counting)
    batches = round_batches(training_dataset(cases, SETTINGS, 1.0), SETTINGS, 0)
    for _ in range(6):  # three epochs of two cases
        next(batches)
    assert sorted(p.name for p in reads) == ["a_img.nii.gz", "b_img.nii.gz"]
