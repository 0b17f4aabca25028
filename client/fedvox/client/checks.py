"""Per-site data checks (`fedvox check-data`, and every client before its first round).

Each case is read once, exactly as training will read it, and checked: the image must be a readable
CT volume in Hounsfield units, the label a readable integer map on the image's grid with only the
declared label values. What comes out is a report with one line per problem (each naming its
file) and a summary of statistics (counts, shapes, spacings, orientations, HU percentiles, label
values, lesion volumes) that the client sends to the server at registration. The summary holds
numbers only, never voxels, so it can leave the site.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedvox.client.layout import SPLITS, Case, Layout, discover
from fedvox.client.volume import DataError, Volume, read_nifti, read_volume

# a head CT always holds air (about -1000 HU) around the head and in the sinuses; a volume whose
# darkest voxels are above this is another modality, or CT whose RescaleIntercept was lost
MAX_AIR_HU = -200.0
HEAD_HU = -500.0  # above this: the head (skin, fat, brain, bone), not air
PERCENTILES = (5, 25, 50, 75, 95)
MAX_SAMPLES = 2_000_000  # voxels per case used for the percentiles
GRID_TOLERANCE = 1e-3  # of a voxel, for image/label geometry
INFO_SUMMARY, INFO_ERROR = "data_summary", "data_error"  # RegisterRequest.info keys
MAX_INFO_ERROR_CHARS = 4000


@dataclass(frozen=True)
class CaseStats:
    split: str
    image: str
    shape: tuple[int, ...]  # in RAS axis order, like the spacing
    spacing: tuple[float, ...]
    axcodes: str  # as stored, before reorientation
    hu: dict[str, float]  # percentiles of the head's voxels (HU > HEAD_HU)
    hu_range: tuple[float, float]
    label_values: tuple[int, ...]
    lesion_ml: float  # foreground (label > 0) volume in millilitres


@dataclass
class SiteReport:
    layout: Layout
    cases: list[CaseStats] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def warnings(self) -> list[str]:
        return self.layout.warnings

    @property
    def datalist(self) -> dict[str, list[Case]]:
        """The cases to train and evaluate on; empty when the site has any error."""
        return {s: list(self.layout.splits[s]) if self.ok else [] for s in SPLITS}

    def summary(self) -> dict[str, Any]:
        """Statistics of the whole site: numbers only, compact enough to travel in Register."""
        out: dict[str, Any] = {
            "layout": self.layout.source,
            "cases": {s: len(self.layout.splits[s]) for s in SPLITS},
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }
        if not self.cases:
            return out
        shapes = np.array([c.shape for c in self.cases])
        spacings = np.array([c.spacing for c in self.cases])
        lesions = [c.lesion_ml for c in self.cases if c.lesion_ml > 0]
        orientations: dict[str, int] = {}
        for c in self.cases:
            orientations[c.axcodes] = orientations.get(c.axcodes, 0) + 1
        out.update(
            {
                "shape": {"min": shapes.min(0).tolist(), "max": shapes.max(0).tolist()},
                "spacing_mm": {
                    "min": _round(spacings.min(0)),
                    "max": _round(spacings.max(0)),
                },
                "orientation": orientations,
                # the median case's percentiles: robust to one odd scan
                "hu": {
                    k: round(float(np.median([c.hu[k] for c in self.cases])), 1)
                    for k in self.cases[0].hu
                },
                "hu_range": [
                    min(c.hu_range[0] for c in self.cases),
                    max(c.hu_range[1] for c in self.cases),
                ],
                "labels": sorted({v for c in self.cases for v in c.label_values}),
                "lesion_cases": len(lesions),
                "lesion_ml_median": round(float(np.median(lesions)), 3) if lesions else 0.0,
            }
        )
        return out

    def info(self) -> dict[str, str]:
        """RegisterRequest.info entries: the summary, and the problems if there are any."""
        info = {INFO_SUMMARY: json.dumps(self.summary(), separators=(",", ":"))}
        if self.errors:
            text = f"{len(self.errors)} problem(s): " + "; ".join(self.errors)
            # paths relative to the data root: the server needs the file, not the site's disk
            for root in {str(self.layout.root.resolve()), str(self.layout.root)}:
                text = text.replace(root + "/", "")
            info[INFO_ERROR] = text[:MAX_INFO_ERROR_CHARS]
        return info


def check_site(root: Path) -> SiteReport:
    """Read and check every case of the site at `root`."""
    layout = discover(root)
    report = SiteReport(layout, errors=list(layout.errors))
    for split, case in layout.cases():
        try:
            report.cases.append(check_case(split, case, layout.labels))
        except DataError as exc:
            report.errors.append(str(exc))
    return report


def check_case(split: str, case: Case, labels: dict[int, str]) -> CaseStats:
    image = read_volume(Path(case["image"]))
    hu = image.array
    if not np.isfinite(hu).all():
        raise DataError(f"{case['image']}: holds NaN or infinite values")
    sample = hu.ravel()[:: max(1, hu.size // MAX_SAMPLES)]
    if sample.min() > MAX_AIR_HU:
        raise DataError(
            f"{case['image']}: does not look like CT in HU: darkest voxel {sample.min():.0f}, "
            f"but a head CT holds air near -1000 HU (another modality, or a lost RescaleIntercept?)"
        )
    head = sample[sample > HEAD_HU]
    if not head.size:
        raise DataError(f"{case['image']}: no head: no voxel above {HEAD_HU:.0f} HU")
    percentiles = np.percentile(head, PERCENTILES)
    label = read_nifti(Path(case["label"]))
    _check_same_grid(image, label, case["label"])
    values = _label_values(label, labels, case["label"])
    order = list(image.ras_axes)
    spacing = np.array(image.spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return CaseStats(
        split=split,
        image=case["image"],
        shape=tuple(int(hu.shape[a]) for a in order),
        spacing=tuple(_round(spacing[order])),
        axcodes=image.axcodes,
        hu={f"p{p}": round(float(v), 1) for p, v in zip(PERCENTILES, percentiles, strict=True)},
        hu_range=(float(sample.min()), float(sample.max())),
        label_values=values,
        lesion_ml=round(float(np.count_nonzero(label.array > 0)) * voxel_ml, 3),
    )


def _check_same_grid(image: Volume, label: Volume, name: str) -> None:
    """The label must cover the image voxel for voxel once both are turned to RAS, as training
    turns them: same shape, same voxel-to-world map (up to float precision)."""
    image_shape, image_affine = image.canonical_grid()
    label_shape, label_affine = label.canonical_grid()
    if image_shape != label_shape:
        raise DataError(
            f"{name}: label shape {_dims(label.array.shape)} differs from its image's "
            f"{_dims(image.array.shape)} ({image.source})"
        )
    tolerance = GRID_TOLERANCE * min(image.spacing) + 1e-4
    axes = np.abs(image_affine - label_affine)[:3, :3].max()
    origin = np.linalg.norm(image_affine[:3, 3] - label_affine[:3, 3])
    if axes > tolerance or origin > tolerance:
        raise DataError(
            f"{name}: label grid differs from its image's ({image.source}): image "
            f"{image.axcodes} {_round(np.array(image.spacing))} mm, label {label.axcodes} "
            f"{_round(np.array(label.spacing))} mm, origins {origin:.3g} mm apart"
        )


def _label_values(label: Volume, labels: dict[int, str], name: str) -> tuple[int, ...]:
    values = np.unique(label.array)
    if not np.all(values == np.round(values)):
        raise DataError(f"{name}: label values must be integers, found {values[:5].tolist()}")
    found = tuple(int(v) for v in values)
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DataError(f"{name}: label values {unknown} not among the declared {sorted(labels)}")
    return found


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _round(values: npt.NDArray[np.float64]) -> list[float]:
    return [round(float(v), 3) for v in values]
