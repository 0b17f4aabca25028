"""A DICOM CT series (a folder of single-frame slices) to a volume in Hounsfield units.

The geometry comes from the headers, never from file names or InstanceNumber: slices are sorted
by their ImagePositionPatient along the slice normal (the cross product of the two
ImageOrientationPatient directions), and every slice must sit one constant step from the last.
A missing, duplicated or displaced slice would otherwise stretch or shift the anatomy silently, so
each is refused with the files involved. The step vector is taken from the positions themselves,
so a gantry-tilted series keeps its (sheared) geometry. Pixel values become HU through each slice's
own RescaleSlope and RescaleIntercept; pydicom applies PixelRepresentation and BitsStored (sign
extension) and decodes compressed transfer syntaxes through the installed plugins (pylibjpeg).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError

from fedvox.client.volume import DataError, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AIR_HU = -1024.0
# a slice may sit this far (mm, and this share of the step) off its expected place
POSITION_TOLERANCE_MM = 0.05
STEP_TOLERANCE = 0.05


@dataclass(frozen=True)
class Slice:
    path: Path
    ds: FileDataset


def dicom_files(folder: Path) -> tuple[list[Slice], list[Path]]:
    """Every DICOM image file under `folder` (recursively), and the other files that were skipped.

    Files without pixel data (DICOMDIR, structured reports) count as skipped, as do non-DICOM files.
    """
    paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    slices, skipped = [], []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            skipped.append(path)
            continue
        if "PixelData" not in ds:
            skipped.append(path)
            continue
        slices.append(Slice(path, ds))
    return slices, skipped


def read_series(folder: Path) -> Volume:
    """Read one CT series; refuse mixed, non-CT, incomplete or unevenly spaced series."""
    slices, skipped = dicom_files(folder)
    # a slice file too damaged to parse would otherwise show up only as a "missing slice"
    note = f" ({len(skipped)} other file(s) skipped, e.g. {skipped[0].name})" if skipped else ""
    if not slices:
        raise DataError(f"{folder}: no DICOM image files{note}")
    try:
        return series_volume(slices, str(folder))
    except DataError as exc:
        raise DataError(f"{exc}{note}") from None


def series_volume(slices: list[Slice], source: str) -> Volume:
    """The volume of slices already known to be DICOM images (see `dicom_files`)."""
    _check_one_series(slices, source)
    ordered, step = _sort_and_check_positions(slices, source)
    first = ordered[0].ds
    row, col = _orientation(ordered[0])
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)  # (between rows, between columns)
    lps = np.eye(4)
    # array axis i runs along a row (the column index), j down a column (the row index)
    lps[:3, 0] = row * col_mm
    lps[:3, 1] = col * row_mm
    lps[:3, 2] = step
    lps[:3, 3] = _position(ordered[0])
    hu = np.stack([_hounsfield(s) for s in ordered], axis=-1)  # (rows, columns, slices)
    return Volume(np.ascontiguousarray(hu.transpose(1, 0, 2)), LPS_TO_RAS @ lps, source)


def _hounsfield(s: Slice) -> npt.NDArray[np.float32]:
    ds = s.ds
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DataError(f"{s.path}: multi-frame DICOM is not supported; export single-frame slices")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(f"{s.path}: {ds.get('PhotometricInterpretation')} colour image, not CT")
    try:
        pixels = ds.pixel_array  # signed/unsigned per PixelRepresentation, J2K sign fixed up
    except Exception as exc:  # each decoder plugin raises its own types
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", syntax)
        raise DataError(f"{s.path}: cannot decode the pixel data ({name}): {exc}") from None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        # outside the reconstruction circle there is no measurement; call it air, not -3024 HU,
        # so that resampling and HU statistics are not dragged by a fill value
        hu[pixels == padding] = AIR_HU
    return hu.astype(np.float32, copy=False)


def _check_one_series(slices: list[Slice], source: str) -> None:
    series = Counter(str(s.ds.get("SeriesInstanceUID", "")) for s in slices)
    if len(series) > 1:
        listing = ", ".join(f"{uid or '(none)'} ({n} files)" for uid, n in series.most_common())
        raise DataError(f"{source}: mixed series, {len(series)} SeriesInstanceUIDs: {listing}")
    modalities = Counter(str(s.ds.get("Modality", "")) for s in slices)
    if set(modalities) != {"CT"}:
        found = ", ".join(f"{m or '(missing)'} ({n} files)" for m, n in modalities.items())
        raise DataError(f"{source}: modality {found}, not CT")
    for key in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
        values = Counter(_header_key(s, key) for s in slices)
        if len(values) > 1:
            (common, _), *_ = values.most_common()
            odd = next(s for s in slices if _header_key(s, key) != common)
            raise DataError(
                f"{source}: slices differ in {key}: {odd.path} has {_header_key(odd, key)}, "
                f"most have {common}"
            )
        if values.most_common(1)[0][0] == "":
            raise DataError(f"{slices[0].path}: missing {key}")


def _header_key(s: Slice, key: str) -> str:
    value = s.ds.get(key)
    if value is None:
        return ""
    if key in ("PixelSpacing", "ImageOrientationPatient"):  # compare numbers, not spellings
        return ",".join(f"{float(v):.4f}" for v in value)
    return str(value)


def _orientation(s: Slice) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    iop = np.asarray([float(v) for v in s.ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    if not (np.isclose(np.linalg.norm(row), 1, atol=1e-3) and abs(row @ col) < 1e-3):
        raise DataError(f"{s.path}: ImageOrientationPatient {iop.tolist()} is not orthonormal")
    return row, col


def _position(s: Slice) -> npt.NDArray[np.float64]:
    if "ImagePositionPatient" not in s.ds:
        raise DataError(f"{s.path}: missing ImagePositionPatient")
    return np.asarray([float(v) for v in s.ds.ImagePositionPatient])


def _sort_and_check_positions(
    slices: list[Slice], source: str
) -> tuple[list[Slice], npt.NDArray[np.float64]]:
    """Slices in order along the normal, and the step vector from one slice to the next."""
    row, col = _orientation(slices[0])
    normal = np.cross(row, col)
    ordered = sorted(slices, key=lambda s: float(_position(s) @ normal))
    positions = np.stack([_position(s) for s in ordered])
    if len(ordered) == 1:
        ds = ordered[0].ds
        thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        return ordered, normal * thickness
    along = positions @ normal
    gaps = np.diff(along)
    tiny = int(np.argmin(gaps))
    if gaps[tiny] < POSITION_TOLERANCE_MM:
        raise DataError(
            f"{source}: two slices at the same position ({along[tiny]:.2f} mm along the normal): "
            f"{ordered[tiny].path.name} and {ordered[tiny + 1].path.name}"
        )
    step_mm = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - step_mm)))
    if abs(gaps[worst] - step_mm) > max(POSITION_TOLERANCE_MM, STEP_TOLERANCE * step_mm):
        missing = round(gaps[worst] / step_mm) - 1
        why = f"{missing} missing slice(s)" if missing >= 1 else "uneven slice spacing"
        raise DataError(
            f"{source}: {why}: {gaps[worst]:.2f} mm between {ordered[worst].path.name} and "
            f"{ordered[worst + 1].path.name}, the other slices are {step_mm:.2f} mm apart"
        )
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    off_line = np.linalg.norm(
        positions - (positions[0] + np.outer(np.arange(len(ordered)), step)), axis=1
    )
    if off_line.max() > max(POSITION_TOLERANCE_MM, STEP_TOLERANCE * step_mm):
        bad = ordered[int(np.argmax(off_line))]
        raise DataError(
            f"{source}: {bad.path.name} is {off_line.max():.2f} mm off the line through the "
            "other slices (slices shifted in-plane, or a variable gantry tilt)"
        )
    return ordered, step
