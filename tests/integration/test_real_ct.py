"""Real images that no one here made, shipped inside packages (see tests/data/README.md):

- two real head CT slices through the DICOM-to-HU path: the CQ500 slice 693_UNCR.dcm (pydicom-data)
  and J2K_pixelrep_mismatch.dcm (pydicom; JPEG 2000 whose codestream says unsigned while the
  header says signed). HU in regions read off the images: air near -1000, brain parenchyma 20 to
  45, skull above 700; and every voxel against an independent decode of the raw pixel data;
- series stacked from the real slice, to test sorting, spacing and the refusal of bad series;
- real MR (nibabel's Siemens DICOM, nilearn's MNI152 T1), which the CT checks must refuse;
- the MNI152 T1 template with its white-matter map as a real-anatomy volume with real tissue
  labels, for a short training run through the whole preprocessing pipeline.

Each test skips, saying which package is missing, only when that package is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from fedvox.client.checks import check_site
from fedvox.client.data import evaluation_dataset, round_batches, training_dataset
from fedvox.client.dicom import LPS_TO_RAS
from fedvox.client.model import build_model
from fedvox.client.volume import DataError, Volume, read_volume
from fedvox.synth.writer import write_nifti
from fedvox.wire.taskconfig import ModelSpec, TrainSettings

CQ500 = "693_UNCR.dcm"  # pydicom-data
J2K = "J2K_pixelrep_mismatch.dcm"  # pydicom itself


def shipped_file(name: str, package: str) -> Path:
    path = get_testdata_file(name, download=False)  # offline: only installed packages
    if path is None:
        pytest.skip(f"{name} not found: install the {package} package")
    return Path(str(path))


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the {package} package is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    assert path.is_file(), f"{package} no longer ships {path}"
    return path


def pixels(volume: Volume, rows: slice, cols: slice) -> np.ndarray:
    """A region given as on the displayed image (rows, columns) of a single-slice volume."""
    return volume.array[cols, rows, 0]  # the volume's array axis i runs along a row


# (name, package, air rows/cols, brain rows/cols): regions read off the brain-window images
REGIONS = {
    CQ500: ("pydicom-data", (slice(32, 96), slice(192, 320)), (slice(256, 320), slice(224, 288))),
    J2K: ("pydicom", (slice(0, 32), slice(160, 352)), (slice(288, 352), slice(192, 320))),
}


@pytest.mark.parametrize("name", REGIONS)
def test_hu_in_known_regions(name: str) -> None:
    package, air, brain = REGIONS[name]
    volume = read_volume(shipped_file(name, package))
    assert abs(np.median(pixels(volume, *air)) + 1000) < 30
    assert 20 <= np.median(pixels(volume, *brain)) <= 45
    # skull: the densest voxel on the midline column, behind the brain and in front of it
    assert pixels(volume, slice(380, 512), slice(256, 257)).max() > 700
    assert pixels(volume, slice(0, 140), slice(256, 257)).max() > 700


def test_cq500_hu_equal_an_independent_decode() -> None:
    path = shipped_file(CQ500, "pydicom-data")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    raw = np.frombuffer(ds.PixelData, dtype="<i2").reshape(512, 512).astype(np.float32)
    expected = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # 1 and -1024
    expected[raw == ds.PixelPaddingValue] = -1024  # the scan circle's padding becomes air
    np.testing.assert_array_equal(read_volume(path).array[:, :, 0], expected.T)
    compressed = read_volume(shipped_file("693_J2KR.dcm", "pydicom-data"))  # lossless JPEG 2000
    np.testing.assert_array_equal(compressed.array[:, :, 0], expected.T)


def test_j2k_sign_follows_pixel_representation() -> None:
    openjpeg = pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg decodes JPEG 2000")
    path = shipped_file(J2K, "pydicom")
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    raw = openjpeg.decode(frame).astype(np.int32)  # the codestream claims unsigned 13-bit
    assert raw.min() >= 0 and ds.PixelRepresentation == 1 and ds.BitsStored == 13
    signed = np.where(raw >= 2**12, raw - 2**13, raw)  # two's complement per the header
    expected = signed * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(read_volume(path).array[:, :, 0], expected.T)


@pytest.mark.parametrize("name", REGIONS)
def test_slice_geometry_agrees_with_nibabel(name: str) -> None:
    path = shipped_file(name, REGIONS[name][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM wrappers experimental
        from nibabel.nicom import dicomwrappers

        theirs = dicomwrappers.wrapper_from_file(str(path)).affine  # type: ignore[no-untyped-call]  # (row, col, slice) -> LPS
    ours = LPS_TO_RAS @ read_volume(path).affine  # (col, row, slice) -> LPS
    np.testing.assert_allclose(ours[:3, [1, 0, 3]], theirs[:3, [0, 1, 3]], atol=1e-4)


def stack(folder: Path, offsets: list[float], **changes: dict[int, Any]) -> list[Path]:
    """Copies of the real CQ500 slice at z + offset, one file each, named in reverse order."""
    template = pydicom.dcmread(shipped_file(CQ500, "pydicom-data"))
    folder.mkdir()
    uid, paths = generate_uid(), []
    for k, offset in enumerate(offsets):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.ImagePositionPatient = [*template.ImagePositionPatient[:2], 47.0 + offset]
        for key, per_slice in changes.items():
            if k in per_slice:
                setattr(ds, key, per_slice[k])
        paths.append(folder / f"slice_{len(offsets) - k:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_a_series_built_from_the_real_slice(tmp_path: Path) -> None:
    single = read_volume(shipped_file(CQ500, "pydicom-data"))
    stack(tmp_path / "series", [0.0, 5.0, 10.0, 15.0])
    volume = read_volume(tmp_path / "series")
    assert volume.array.shape == (512, 512, 4)
    np.testing.assert_allclose(volume.spacing, (0.478516, 0.478516, 5.0), atol=1e-6)
    for k in range(4):
        np.testing.assert_array_equal(volume.array[:, :, k], single.array[:, :, 0])
    np.testing.assert_allclose(volume.affine[:3, 3], [122.5, 112.4, 47.0])  # LPS (-122.5, ...)


@pytest.mark.parametrize(
    ("offsets", "changes", "message"),
    [
        ([0.0, 5.0, 15.0, 20.0], {}, "1 missing slice"),
        ([0.0, 5.0, 5.0, 10.0], {}, "two slices at the same position"),
        ([0.0, 5.0, 10.0], {"SeriesInstanceUID": {1: "1.2.3"}}, "mixed series"),
        ([0.0, 5.0, 10.0], {"PixelSpacing": {2: [0.5, 0.5]}}, "slices differ in PixelSpacing"),
        ([0.0, 5.0, 10.0], {"Modality": {0: "MR"}}, "modality CT (2 files), MR (1 files)"),
    ],
)
def test_bad_series_from_the_real_slice_are_refused(
    tmp_path: Path, offsets: list[float], changes: dict[str, dict[int, Any]], message: str
) -> None:
    stack(tmp_path / "series", offsets, **changes)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_volume(tmp_path / "series")


def test_real_mr_dicom_is_refused(tmp_path: Path) -> None:
    path = package_file("nibabel", "nicom", "tests", "data", "0.dcm")  # Siemens MR
    with pytest.raises(DataError, match=r"modality MR \(1 files\), not CT"):
        read_volume(path)


def mni(name: str) -> nib.Nifti1Image:
    path = package_file(
        "nilearn", "datasets", "data", f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    )
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def test_check_data_refuses_the_mni_t1_as_not_ct(tmp_path: Path) -> None:
    t1, wm = mni("t1"), mni("wm")
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    write_nifti(tmp_path / "imagesTr/mni.nii.gz", np.asarray(t1.dataobj), t1.affine)
    write_nifti(
        tmp_path / "labelsTr/mni.nii.gz", (np.asarray(wm.dataobj) > 127).astype(np.uint8), wm.affine
    )
    (error,) = check_site(tmp_path).errors  # the MRI's background is 0, no air
    assert error.startswith(f"{tmp_path / 'imagesTr/mni.nii.gz'}: does not look like CT in HU")


def test_training_smoke_on_real_anatomy(tmp_path: Path) -> None:
    """White matter of the MNI152 template, learnt through resampling (1 -> 6 mm), head crop,
    balanced patches, augmentation and two windows. The T1 becomes pseudo-HU: its zero
    background -> air (-1000), tissue 0..255 -> 0..80, so the brain window sees the range."""
    t1, wm = mni("t1"), mni("wm")
    intensity = np.asarray(t1.dataobj).astype(np.float32)
    pseudo_hu = np.where(intensity > 0, intensity * 80.0 / 255.0, -1000.0).astype(np.int16)
    label = (np.asarray(wm.dataobj) > 127).astype(np.uint8)  # white matter probability > 0.5
    case = {"image": str(tmp_path / "mni_t1.nii.gz"), "label": str(tmp_path / "mni_wm.nii.gz")}
    write_nifti(Path(case["image"]), pseudo_hu, t1.affine)
    write_nifti(Path(case["label"]), label, wm.affine)
    settings = TrainSettings(
        patch_size=24,
        batch_size=2,
        lr=0.02,
        spacing=(6.0, 6.0, 6.0),
        extra_windows=((-100.0, 200.0),),
    )
    spec = ModelSpec(channels=(8, 16, 32), strides=(2, 2), num_res_units=1, in_channels=2)
    torch.manual_seed(0)
    model = build_model(spec)
    evaluation = evaluation_dataset([case], settings, 1.0)
    item = evaluation[0]
    # the brain's box at 6 mm plus 4-voxel margins, clipped to the whole 197x233x189 mm grid
    brain = np.argwhere(intensity > 0)  # 1 mm voxels
    low = np.maximum(np.floor(brain.min(0) / 6.0) - 4, 0)
    high = np.minimum(np.ceil((brain.max(0) + 1) / 6.0) + 4, np.ceil(np.array(intensity.shape) / 6))
    expected = high - low
    assert item["image"].shape[0] == 2  # brain window + one extra window
    np.testing.assert_allclose(item["image"].shape[1:], expected, atol=1.5)
    before = dice(model, item, settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    batches = round_batches(training_dataset([case], settings, 1.0), settings, seed=0)
    model.train()
    for _ in range(30):
        batch = next(batches)
        optimizer.zero_grad()
        loss_fn(model(batch["image"]), batch["label"]).backward()
        optimizer.step()
    after = dice(model, item, settings)
    # seen: 0.14 untrained, 0.71 after 30 steps
    assert after > 0.55 and after > before + 0.3, (before, after)


def dice(model: torch.nn.Module, item: dict[str, torch.Tensor], settings: TrainSettings) -> float:
    model.eval()
    with torch.inference_mode():
        roi = [settings.patch_size] * 3
        logits = sliding_window_inference(item["image"][None], roi, 2, model, overlap=0.25)
        assert isinstance(logits, torch.Tensor)
    metric = DiceMetric(include_background=False)
    pred = torch.nn.functional.one_hot(logits.argmax(1), 2).permute(0, 4, 1, 2, 3)
    truth = torch.nn.functional.one_hot(item["label"][None, 0].long(), 2).permute(0, 4, 1, 2, 3)
    value = float(metric(y_pred=pred, y=truth).mean())
    model.train()
    return 0.0 if math.isnan(value) else value
