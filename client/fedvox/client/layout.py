"""Which cases a site holds: its MSD-style dataset.json, or else its imagesTr/labelsTr folders.

An image is a NIfTI file or a DICOM series folder; a label is a NIfTI file on the image's grid.
Problems are collected rather than raised, so that `fedvox check-data` can list every bad file at
once; `fedvox.client.checks.check_site` adds what reading each file finds.

Without a dataset.json the layout is discovered from the Medical Segmentation Decathlon folder
names: imagesTr/ (training, required) with labelsTr/, and imagesTs/ with labelsTs/ (test). A case
is a NIfTI file (its name less the extension and an nnU-Net channel suffix "_0000") or a
sub-folder holding one DICOM series (the folder's name); its label is labels*/<case>.nii[.gz].
When no validation list is given, about a fifth of the training cases (at least one, when there are
two or more) become validation, chosen by a hash of the case name so that adding cases later moves
few of the existing ones.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvox.client.volume import NIFTI_SUFFIXES, is_nifti

SPLITS = ("training", "validation", "test")
DATASET_JSON = "dataset.json"
FOLDERS = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
VALIDATION_SHARE = 0.2
DEFAULT_LABELS = {0: "background", 1: "haemorrhage"}
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's case_0000.nii.gz
Case = dict[str, str]


@dataclass
class Layout:
    root: Path
    source: str  # "dataset.json" or "imagesTr/"
    splits: dict[str, list[Case]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    labels: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def cases(self) -> list[tuple[str, Case]]:
        return [(split, case) for split in SPLITS for case in self.splits[split]]


def discover(root: Path) -> Layout:
    """The site's cases and any problems with the layout itself (not yet with file contents)."""
    if not root.is_dir():
        layout = Layout(root, "")
        layout.errors.append(f"{root}: data root is not a folder")
        return layout
    layout = _from_dataset_json(root) if (root / DATASET_JSON).exists() else _from_folders(root)
    if not layout.errors and not layout.splits["training"]:
        layout.errors.append(f"{root}: no training cases ({layout.source} lists none)")
    _check_overlap(layout)
    return layout


def _from_dataset_json(root: Path) -> Layout:
    path = root / DATASET_JSON
    layout = Layout(root, DATASET_JSON)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        layout.errors.append(f"{path}: not valid JSON ({exc})")
        return layout
    if not isinstance(meta, dict):
        layout.errors.append(f"{path}: expected a JSON object at the top level")
        return layout
    _read_declarations(meta, path, layout)
    for split in SPLITS:
        entries = meta.get(split, [])
        if not isinstance(entries, list):
            layout.errors.append(f"{path}: {split!r} must be a list of {{image, label}} entries")
            continue
        for index, entry in enumerate(entries):
            case = _entry_case(entry, f"{path}: {split}[{index}]", root, layout)
            if case is not None:
                _add(layout, split, case, f"{path}: {split}[{index}]")
    if "validation" not in meta:
        _carve_validation(layout)
    return layout


def _read_declarations(meta: dict[str, Any], path: Path, layout: Layout) -> None:
    modality = meta.get("modality")
    if isinstance(modality, dict) and modality:
        if len(modality) > 1:
            layout.errors.append(
                f"{path}: declares {len(modality)} image channels; fedvox reads one"
            )
        name = str(next(iter(modality.values())))
        if name.strip().upper() != "CT":
            layout.errors.append(f"{path}: declares modality {name!r}, not CT")
    labels = meta.get("labels")
    if isinstance(labels, dict) and labels:
        try:
            layout.labels = {int(k): str(v) for k, v in labels.items()}
        except ValueError:
            layout.errors.append(f"{path}: 'labels' keys must be integers, got {list(labels)}")


def _entry_case(entry: object, where: str, root: Path, layout: Layout) -> Case | None:
    if isinstance(entry, str):  # MSD lists test images as bare paths
        entry = {"image": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        layout.errors.append(f"{where}: expected {{'image': path, 'label': path}}, got {entry!r}")
        return None
    case = {"image": str((root / entry["image"]).resolve())}
    label = entry.get("label")
    if isinstance(label, str):
        case["label"] = str((root / label).resolve())
    return case


def _add(layout: Layout, split: str, case: Case, where: str) -> None:
    """Record a case if its files exist and it has a label; otherwise say why not."""
    missing = [p for p in case.values() if not Path(p).exists()]
    for path in missing:
        layout.errors.append(f"{path}: missing ({where} lists it)")
    if missing:
        return
    if "label" not in case:
        if split == "training":
            layout.errors.append(f"{case['image']}: training image without a label ({where})")
        else:  # unlabelled evaluation images cannot be scored; say so, do not fail the site
            layout.warnings.append(f"{case['image']}: {split} image without a label, ignored")
        return
    layout.splits[split].append(case)


def _from_folders(root: Path) -> Layout:
    layout = Layout(root, "imagesTr/")
    if not (root / "imagesTr").is_dir():
        layout.errors.append(
            f"{root}: no {DATASET_JSON} and no imagesTr/ folder: "
            "a site needs one or the other (see fedvox check-data --help)"
        )
        return layout
    for split, (images, labels) in FOLDERS.items():
        for name, image in _folder_cases(root / images, layout):
            label = next(
                (
                    root / labels / (name + s)
                    for s in NIFTI_SUFFIXES
                    if (root / labels / (name + s)).is_file()
                ),
                None,
            )
            case = {"image": str(image.resolve())}
            if label is not None:
                case["label"] = str(label.resolve())
            _add(layout, split, case, f"{images}/")
    _carve_validation(layout)
    return layout


def _folder_cases(folder: Path, layout: Layout) -> list[tuple[str, Path]]:
    """(case name, image path) for every NIfTI file and series sub-folder of `folder`."""
    if not folder.is_dir():
        return []
    cases = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            cases.append((path.name, path))
        elif is_nifti(path):
            stem = path.name[
                : -len(next(s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)))
            ]
            cases.append((_CHANNEL_SUFFIX.sub("", stem), path))
        elif _looks_like_dicom(path):
            layout.errors.append(
                f"{path}: a loose DICOM file in {folder.name}/; put each series in its own folder"
            )
        else:
            layout.warnings.append(f"{path}: neither NIfTI nor a series folder, ignored")
    return cases


def _looks_like_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _carve_validation(layout: Layout) -> None:
    training = layout.splits["training"]
    if len(training) < 2 or layout.splits["validation"]:
        return
    count = max(1, round(VALIDATION_SHARE * len(training)))
    by_hash = sorted(training, key=lambda c: zlib.crc32(Path(c["image"]).name.encode()))
    chosen = {c["image"] for c in by_hash[:count]}
    layout.splits["validation"] = [c for c in training if c["image"] in chosen]
    layout.splits["training"] = [c for c in training if c["image"] not in chosen]


def _check_overlap(layout: Layout) -> None:
    """An image in two splits would leak evaluation cases into training."""
    seen: dict[str, str] = {}
    for split, case in layout.cases():
        other = seen.setdefault(case["image"], split)
        if other != split:
            layout.errors.append(f"{case['image']}: listed in both {other} and {split}")
