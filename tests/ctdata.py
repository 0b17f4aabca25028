"""Small CT fixtures with known numbers for the data-layer tests: DICOM series written slice by
slice with pydicom, NIfTI volumes, and a box-shaped "head" whose HU and lesion are known exactly."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fedvox.synth.writer import write_nifti

Array = npt.NDArray[Any]
Vector = Sequence[float] | Array
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_slice(
    hu: Array,
    *,
    position: Vector,
    orientation: Sequence[float] = AXIAL,
    spacing: tuple[float, float] = (0.5, 0.5),
    series_uid: str,
    instance: int,
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = True,
    modality: str = "CT",
    tags: dict[str, Any] | None = None,
) -> Dataset:
    """One CT Image Storage slice whose stored values give `hu` (rows, columns) after rescale."""
    stored = np.round((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    assert stored.min() >= info.min and stored.max() <= info.max, "HU do not fit the stored type"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = modality, series_uid, instance
    ds.StudyInstanceUID = "1.2.3.4"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
    ds.SliceThickness = "5"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelData = stored.astype(dtype).tobytes()
    for key, value in (tags or {}).items():
        setattr(ds, key, value)
    return ds


def series_positions(origin: Vector, normal_step: Vector, count: int) -> list[Array]:
    """ImagePositionPatient of each slice: origin + k * step."""
    return [np.asarray(origin, float) + k * np.asarray(normal_step, float) for k in range(count)]


def write_series(
    folder: Path,
    hu: Array,
    *,
    origin: Vector = (-10.0, -20.0, 30.0),
    step: Vector = (0.0, 0.0, 2.5),
    orientation: Sequence[float] = AXIAL,
    spacing: tuple[float, float] = (0.5, 0.5),
    shuffle_seed: int | None = 0,
    **slice_args: Any,
) -> list[Path]:
    """Write `hu` (rows, columns, slices) as one series, files named in a shuffled order so that
    nothing but the headers can tell the reader how to stack them. Returns the paths by slice."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = str(slice_args.pop("series_uid", generate_uid()))
    order = list(range(hu.shape[2]))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    paths = []
    for k, position in enumerate(series_positions(origin, step, hu.shape[2])):
        ds = ct_slice(
            hu[:, :, k],
            position=position,
            orientation=orientation,
            spacing=spacing,
            series_uid=uid,
            instance=order[k] + 1,
            **slice_args,
        )
        path = folder / f"IM{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def box_head(
    shape: tuple[int, int, int] = (40, 40, 24), lesion: bool = True
) -> tuple[Array, Array]:
    """Air (-1000 HU) around a box "head": 2-voxel skull (+1000), brain (+35) and, if asked, a
    4x4x4 lesion (+70) at voxels 18..21 on every axis. Returns (int16 HU, uint8 label)."""
    hu = np.full(shape, -1000, np.int16)
    hu[6:-6, 6:-6, 4:-4] = 1000
    hu[8:-8, 8:-8, 6:-6] = 35
    label = np.zeros(shape, np.uint8)
    if lesion:
        hu[18:22, 18:22, 10:14] = 70
        label[18:22, 18:22, 10:14] = 1
    return hu, label


def ras_affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Array:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def write_case(
    root: Path,
    name: str,
    hu: Array,
    label: Array,
    affine: Array,
    folders: tuple[str, str] = ("imagesTr", "labelsTr"),
) -> dict[str, str]:
    """Write an image/label NIfTI pair; returns the dataset.json entry (paths relative to root)."""
    entry = {"image": f"{folders[0]}/{name}.nii.gz", "label": f"{folders[1]}/{name}.nii.gz"}
    for key, data in (("image", hu), ("label", label)):
        (root / entry[key]).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(root / entry[key], data, affine)
    return entry


def box_site(root: Path, n_train: int = 3, n_test: int = 1) -> dict[str, Any]:
    """A site of box heads at 2 mm with a dataset.json; returns the dataset.json content."""
    affine = ras_affine((2.0, 2.0, 2.0))
    meta: dict[str, Any] = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "lesion"}}
    for split, count, folders in (
        ("training", n_train, ("imagesTr", "labelsTr")),
        ("test", n_test, ("imagesTs", "labelsTs")),
    ):
        meta[split] = [
            write_case(root, f"{split}_{i}", *box_head(lesion=i % 2 == 0), affine, folders)
            for i in range(count)
        ]
    meta["validation"] = []
    (root / "dataset.json").write_text(json.dumps(meta))
    return meta
