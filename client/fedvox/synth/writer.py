"""Write synthetic sites to disk as Medical Segmentation Decathlon (MSD) style datasets.

Layout of one site directory::

    site-a/
      dataset.json                       # written last: its presence marks a complete site
      imagesTr/site-a_train_000.nii.gz   # training and validation images (int16 HU)
      labelsTr/site-a_train_000.nii.gz   # uint8, 0 background, 1 haemorrhage
      imagesTs/site-a_test_000.nii.gz    # test images, kept apart so a glob of imagesTr never
      labelsTs/site-a_test_000.nii.gz    # leaks test cases into training

Validation cases live in imagesTr/labelsTr (as in MSD, where validation is carved from training);
``dataset.json`` says which case belongs to which split.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from fedvox.synth.phantom import Grid, Split, SynthCase, seed_sequence, synthesize_case
from fedvox.synth.profiles import SiteProfile, default_profiles

Progress = Callable[[str], None]

MIN_SIZE = 16
DATASET_JSON = "dataset.json"
_SPLIT_DIRS: dict[Split, tuple[str, str]] = {
    Split.TRAIN: ("imagesTr", "labelsTr"),
    Split.VAL: ("imagesTr", "labelsTr"),
    Split.TEST: ("imagesTs", "labelsTs"),
}
_DATASET_KEYS: dict[Split, str] = {
    Split.TRAIN: "training",
    Split.VAL: "validation",
    Split.TEST: "test",
}


def lesion_case_count(n_cases: int, prevalence: float) -> int:
    """Number of lesion cases in a split: round-half-up of ``prevalence * n_cases``, but at least
    one whenever the split is non-empty, so that Dice is defined on every split."""
    if n_cases <= 0:
        return 0
    return min(n_cases, max(1, math.floor(prevalence * n_cases + 0.5)))


def plan_lesions(n_cases: int, prevalence: float, rng: np.random.Generator) -> list[bool]:
    """Which cases of a split carry a lesion (exactly ``lesion_case_count`` of them)."""
    chosen = rng.choice(n_cases, size=lesion_case_count(n_cases, prevalence), replace=False)
    flags = [False] * n_cases
    for i in chosen.tolist():
        flags[i] = True
    return flags


def case_name(site: str, split: Split, index: int) -> str:
    return f"{site}_{split.value}_{index:03d}"


def write_nifti(path: Path, data: npt.NDArray[np.generic], affine: npt.NDArray[np.float64]) -> None:
    """Save with identical qform and sform (both code 1, scanner) so every reader agrees."""
    # nibabel ships py.typed but leaves these unannotated.
    image = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    image.set_qform(affine, code=1)  # type: ignore[no-untyped-call]
    image.set_sform(affine, code=1)  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm", "sec")  # type: ignore[no-untyped-call]
    nib.save(image, path)


def _write_case(site_dir: Path, split: Split, name: str, case: SynthCase) -> dict[str, str]:
    image_dir, label_dir = _SPLIT_DIRS[split]
    entry = {"image": f"./{image_dir}/{name}.nii.gz", "label": f"./{label_dir}/{name}.nii.gz"}
    write_nifti(site_dir / entry["image"], case.image, case.grid.affine)
    write_nifti(site_dir / entry["label"], case.label, case.grid.affine)
    return entry


def _check_counts(size: int, seed: int, counts: dict[Split, int]) -> None:
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"number of {split.value} cases must be >= 0, got {n}")


def _write_json_atomic(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def generate_site(
    out_dir: Path,
    profile: SiteProfile,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int,
    seed: int,
    progress: Progress | None = None,
) -> Path:
    """Generate one site's cases into ``out_dir`` (the site directory itself) and return it.

    Always regenerates; ``generate_federation`` is the idempotent entry point. The case mix is
    fixed per split by :func:`lesion_case_count`; everything is a pure function of ``seed``, the
    profile and the counts.
    """
    counts = {Split.TRAIN: n_train, Split.VAL: n_val, Split.TEST: n_test}
    _check_counts(size, seed, counts)
    out_dir = Path(out_dir)
    # Drop the completion marker first: an interrupted rewrite must not look like a finished site.
    (out_dir / DATASET_JSON).unlink(missing_ok=True)
    for directory in {d for pair in _SPLIT_DIRS.values() for d in pair}:
        (out_dir / directory).mkdir(parents=True, exist_ok=True)

    entries: dict[str, list[dict[str, str]]] = {}
    lesion_cases: list[str] = []
    for split, n_cases in counts.items():
        plan_rng = np.random.default_rng(seed_sequence(seed, profile.name, split))
        split_entries = entries.setdefault(_DATASET_KEYS[split], [])
        for index, has_lesion in enumerate(
            plan_lesions(n_cases, profile.lesion_prevalence, plan_rng)
        ):
            name = case_name(profile.name, split, index)
            case = synthesize_case(
                profile, size=size, seed=seed, split=split, index=index, has_lesion=has_lesion
            )
            split_entries.append(_write_case(out_dir, split, name, case))
            if has_lesion:
                lesion_cases.append(name)
            if progress is not None:
                lesion_note = "lesion" if has_lesion else "no lesion"
                progress(
                    f"{profile.name}: {split.value} {index + 1}/{n_cases} {name} ({lesion_note})"
                )

    grid = Grid.for_profile(profile, size)
    manifest: dict[str, object] = {
        "name": f"fedvox-synth-{profile.name}",
        "description": "Synthetic head CT (HU) with intracranial haemorrhage labels, "
        "generated by fedvox.synth",
        "reference": "fedvox.synth analytic phantom",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "haemorrhage"},
        "numTraining": n_train,
        "numValidation": n_val,
        "numTest": n_test,
        **entries,
        "fedvox_profile": profile.to_json(),
        "fedvox_grid": {"size": size, "shape": list(grid.shape), "spacing_mm": list(grid.spacing)},
        "fedvox_lesion_cases": lesion_cases,
        "seed": seed,
    }
    _write_json_atomic(out_dir / DATASET_JSON, manifest)
    return out_dir


def generate_federation(
    out_dir: Path,
    n_sites: int,
    *,
    seed: int = 0,
    size: int = 64,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    profiles: list[SiteProfile] | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``out_dir/<profile.name>`` for each site and return those directories.

    A site directory that already holds a dataset.json is left untouched, so re-running after an
    interruption only fills in what is missing. ``profiles`` defaults to
    :func:`~fedvox.synth.profiles.default_profiles`.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    if profiles is None:
        profiles = default_profiles(n_sites)
    if len(profiles) != n_sites:
        raise ValueError(f"got {len(profiles)} profiles for {n_sites} sites")
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    _check_counts(size, seed, {Split.TRAIN: n_train, Split.VAL: n_val, Split.TEST: n_test})

    site_dirs = []
    for profile in profiles:
        site_dir = Path(out_dir) / profile.name
        site_dirs.append(site_dir)
        if (site_dir / DATASET_JSON).exists():
            if progress is not None:
                progress(f"{profile.name}: {DATASET_JSON} exists, skipped")
            continue
        generate_site(
            site_dir,
            profile,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            size=size,
            seed=seed,
            progress=progress,
        )
    return site_dirs
