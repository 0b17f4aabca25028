"""The comparison's scenarios: synthetic federations built from `fedvox.synth` site profiles, and
the pooled site that lists every site's cases."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedvox.synth.profiles import (
    SiteProfile,
    iid_profiles,
    mixed_profiles,
    prevalence_shift_profiles,
    scanner_shift_profiles,
)

POOLED_SITE = "pooled"
DATASET_JSON = "dataset.json"
SPLITS = ("training", "validation", "test")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    profiles: Callable[[int], list[SiteProfile]]
    quantity_skew: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("iid", "one scanner and case mix at every site, equal sizes", iid_profiles),
        Scenario(
            "scanner-shift",
            "feature shift: HU offset, noise, blur and voxel spacing differ per site",
            scanner_shift_profiles,
        ),
        Scenario(
            "prevalence-shift",
            "label skew: lesion prevalence and lesion size differ per site",
            prevalence_shift_profiles,
        ),
        Scenario(
            "quantity-skew",
            "IID scanners and case mix, training-set sizes about 10:3:1",
            iid_profiles,
            quantity_skew=True,
        ),
        Scenario(
            "mixed",
            "scanner shift, prevalence shift and 10:3:1 quantity skew together",
            mixed_profiles,
            quantity_skew=True,
        ),
    )
}


def training_counts(n_sites: int, n_train: int, quantity_skew: bool) -> list[int]:
    """Training cases per site: `n_train` each, or under quantity skew geometric sizes from
    10x down to 1x (10:3.2:1 for three sites) where the smallest site holds
    max(2, round(n_train / 4)) cases."""
    if not quantity_skew or n_sites == 1:
        return [n_train] * n_sites
    smallest = max(2, round(n_train / 4))
    return [round(smallest * 10 ** (1 - i / (n_sites - 1))) for i in range(n_sites)]


def synthesise(
    scenario: Scenario,
    root: Path,
    *,
    n_sites: int,
    seed: int,
    size: int,
    n_train: int,
    n_val: int,
    n_test: int,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the scenario's sites under `root` (a site that already has its dataset.json is
    kept, so an interrupted run only fills in what is missing) and return their folders."""
    from fedvox.synth import generate_site

    counts = training_counts(n_sites, n_train, scenario.quantity_skew)
    dirs = []
    for profile, count in zip(scenario.profiles(n_sites), counts, strict=True):
        site_dir = root / profile.name
        dirs.append(site_dir)
        if (site_dir / DATASET_JSON).exists():
            continue
        if progress is not None:
            progress(f"synthesising {profile.name} ({count} training cases) in {site_dir}")
        generate_site(
            site_dir,
            profile,
            n_train=count,
            n_val=n_val,
            n_test=n_test,
            size=size,
            seed=seed,
        )
    return dirs


def site_cases(site_dir: Path) -> dict[str, list[dict[str, str]]]:
    """A site's cases per split, with absolute paths, as its client reads them."""
    from fedvox.client.layout import discover

    layout = discover(site_dir)
    if layout.errors:
        raise ValueError(f"site {site_dir}: " + "; ".join(layout.errors[:3]))
    return {split: list(layout.splits[split]) for split in SPLITS}


def write_pooled_site(site_dirs: list[Path], folder: Path) -> Path:
    """`folder/pooled/dataset.json` listing every site's training, validation and test cases by
    absolute path: centralised training on the union of the sites' data."""
    union: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for site_dir in site_dirs:
        for split, cases in site_cases(site_dir).items():
            union[split].extend(cases)
    pooled = folder / POOLED_SITE
    pooled.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {
        "name": "fedvox-compare-pooled",
        "description": "the union of the sites " + ", ".join(d.name for d in site_dirs),
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "haemorrhage"},
        **union,
    }
    tmp = pooled / (DATASET_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, pooled / DATASET_JSON)
    return pooled


def site_digest(site_dir: Path) -> str:
    """sha256 over every case's split, file name and bytes, in the order the client reads them."""
    digest = hashlib.sha256()
    for split, cases in site_cases(site_dir).items():
        for case in cases:
            for key in ("image", "label"):
                path = Path(case[key])
                digest.update(f"{split}:{key}:{path.name}:".encode())
                digest.update(_file_digest(path).encode())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    if path.is_dir():  # a DICOM series folder
        inner = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            inner.update(f"{child.relative_to(path)}:{_file_digest(child)}".encode())
        return inner.hexdigest()
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
