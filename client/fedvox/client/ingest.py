"""`fedvox ingest SRC DST`: DICOM CT series -> NIfTI (int16 HU, RAS affine) plus a dataset.json.

Every file under SRC is read once and grouped by SeriesInstanceUID, wherever it lies, so a PACS
export with mixed folders works as well as one folder per series. Each series goes through the
same reader and checks as training (fedvox.client.dicom): a non-CT, incomplete or uneven series is
reported with its reason and skipped, never half-converted. With --labels, a label map named
<case>.nii.gz in that folder is checked against its image's grid and copied to labelsTr/; cases
with a label become training cases, the rest are listed as unlabelled test images (MSD style).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvox.client.checks import check_case
from fedvox.client.dicom import Slice, dicom_files, series_volume
from fedvox.client.layout import DATASET_JSON, DEFAULT_LABELS
from fedvox.client.volume import DataError, Volume
from fedvox.synth.writer import write_nifti

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Converted:
    name: str
    series_uid: str
    files: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("src", type=Path, help="folder holding DICOM files (searched recursively)")
    parser.add_argument("dst", type=Path, help="site folder to write imagesTr/ and dataset.json to")
    parser.add_argument("--labels", type=Path, help="folder of <case>.nii.gz label maps")


def run(args: argparse.Namespace) -> int:
    if (args.dst / DATASET_JSON).exists():
        raise ValueError(f"{args.dst} already holds a {DATASET_JSON}; choose an empty folder")
    converted, problems = ingest(args.src, args.dst, args.labels)
    for case in converted:
        print(
            f"converted {case.name}: {'x'.join(map(str, case.shape))} voxels of "
            f"{'x'.join(f'{v:.2f}' for v in case.spacing)} mm from {case.files} file(s)"
        )
    for problem in problems:
        print(f"skipped: {problem}")
    print(f"{len(converted)} series written to {args.dst}, {len(problems)} skipped")
    return 1 if problems or not converted else 0


def ingest(src: Path, dst: Path, labels: Path | None) -> tuple[list[Converted], list[str]]:
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder")
    converted: list[Converted] = []
    problems: list[str] = []
    training: list[dict[str, str]] = []
    unlabelled: list[str] = []
    for uid, slices in sorted(_group_series(src).items()):
        name = _case_name(slices[0], {c.name for c in converted})
        where = f"series {uid} ({len(slices)} files in {slices[0].path.parent})"
        try:
            volume, labelled = _convert(slices, where, dst, name, labels)
        except DataError as exc:
            problems.append(str(exc))
            continue
        image = f"imagesTr/{name}.nii.gz"
        if labelled:
            training.append({"image": image, "label": f"labelsTr/{name}.nii.gz"})
        else:
            unlabelled.append(image)
        shape = tuple(int(n) for n in volume.array.shape)
        converted.append(Converted(name, uid, len(slices), shape, volume.spacing))
    dst.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": dst.name,
        "description": f"CT series converted from {src} by fedvox ingest",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in DEFAULT_LABELS.items()},
        "training": training,
        "test": unlabelled,
        "fedvox_series": {c.name: c.series_uid for c in converted},
    }
    (dst / DATASET_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return converted, problems


def _convert(
    slices: list[Slice], where: str, dst: Path, name: str, labels: Path | None
) -> tuple[Volume, bool]:
    """Write one series (and its label, if there is one); nothing is left behind on failure."""
    volume = series_volume(slices, where)
    image = dst / "imagesTr" / f"{name}.nii.gz"
    label = dst / "labelsTr" / f"{name}.nii.gz"
    source = labels / f"{name}.nii.gz" if labels is not None else None
    try:
        _write_hu(image, volume)
        if source is None or not source.is_file():
            return volume, False
        label.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, label)
        check_case("training", {"image": str(image), "label": str(label)}, DEFAULT_LABELS)
        return volume, True
    except DataError:
        image.unlink(missing_ok=True)
        label.unlink(missing_ok=True)
        raise


def _group_series(src: Path) -> dict[str, list[Slice]]:
    groups: dict[str, list[Slice]] = defaultdict(list)
    for s in dicom_files(src)[0]:  # non-DICOM files (DICOMDIR indexes, notes) are passed over
        groups[str(s.ds.get("SeriesInstanceUID", "unknown"))].append(s)
    return groups


def _case_name(first: Slice, taken: set[str]) -> str:
    ds = first.ds
    base = _UNSAFE.sub("-", f"{ds.get('PatientID', 'case')}_{ds.get('SeriesNumber', 0)}")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _write_hu(path: Path, volume: Volume) -> None:
    """int16 when every HU is a whole number in range (the usual slope of 1), else float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = volume.array
    whole = np.array_equal(data, np.round(data)) and data.min() >= -32768 and data.max() <= 32767
    write_nifti(path, data.astype(np.int16) if whole else data, volume.affine)
