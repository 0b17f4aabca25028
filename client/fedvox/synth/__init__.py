"""Deterministic synthetic head CT federations for tests and demos.

Each site gets an MSD-style dataset (see :mod:`fedvox.synth.writer` for the layout) of int16
Hounsfield-unit volumes with uint8 haemorrhage labels. The anatomy is an analytic phantom in
millimetres (:mod:`fedvox.synth.phantom`); sites differ in scanner calibration, noise, blur, voxel
spacing, lesion prevalence and lesion size (:mod:`fedvox.synth.profiles`). Everything is a pure
function of the seed::

    from fedvox.synth import generate_federation
    site_dirs = generate_federation(Path("data"), n_sites=3, seed=0, size=64)
"""

from __future__ import annotations

from fedvox.synth.phantom import (
    HU_AIR,
    HU_RANGES,
    Grid,
    Split,
    SynthCase,
    Tissue,
    synthesize_case,
)
from fedvox.synth.profiles import (
    FOV_MM,
    REFERENCE_SIZE,
    SiteProfile,
    default_profiles,
    iid_profiles,
    site_name,
)
from fedvox.synth.writer import (
    DATASET_JSON,
    case_name,
    generate_federation,
    generate_site,
    lesion_case_count,
)

__all__ = [
    "DATASET_JSON",
    "FOV_MM",
    "HU_AIR",
    "HU_RANGES",
    "REFERENCE_SIZE",
    "Grid",
    "SiteProfile",
    "Split",
    "SynthCase",
    "Tissue",
    "case_name",
    "default_profiles",
    "generate_federation",
    "generate_site",
    "iid_profiles",
    "lesion_case_count",
    "site_name",
    "synthesize_case",
]
