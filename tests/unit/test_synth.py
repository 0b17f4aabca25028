"""Tests of the synthetic head CT generator (fedvox.synth)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from fedvox.synth import (
    SiteProfile,
    Split,
    SynthCase,
    Tissue,
    cli,
    default_profiles,
    generate_federation,
    generate_site,
    iid_profiles,
    lesion_case_count,
    site_name,
    synthesize_case,
)
from fedvox.synth.phantom import Anatomy, Ellipsoid, Grid, Lesion, draw_anatomy, render

# Noise-, blur- and offset-free scanner at the reference 3.125 mm spacing.
CLEAN = SiteProfile(name="site-test", lesion_radius_mm=(8.0, 14.0))
SIZE = 48  # 4.17 mm voxels: fast, yet every tissue covers many voxels
TINY = 20  # for on-disk tests


def make_case(
    profile: SiteProfile = CLEAN,
    *,
    seed: int = 0,
    index: int = 0,
    has_lesion: bool = True,
    size: int = SIZE,
) -> SynthCase:
    return synthesize_case(
        profile, size=size, seed=seed, split=Split.TRAIN, index=index, has_lesion=has_lesion
    )


@pytest.fixture(scope="module")
def clean_case() -> SynthCase:
    return make_case()


def load_nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def load_array(path: Path) -> npt.NDArray[np.generic]:
    return np.asarray(load_nifti(path).dataobj)


# --- profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "name"),
    [
        (0, "site-a"),
        (1, "site-b"),
        (25, "site-z"),
        (26, "site-aa"),
        (27, "site-ab"),
        (701, "site-zz"),
        (702, "site-aaa"),
    ],
)
def test_site_name_is_spreadsheet_style(index: int, name: str) -> None:
    assert site_name(index) == name


def test_default_profiles_are_deterministic_and_non_iid() -> None:
    profiles = default_profiles(4)
    assert profiles == default_profiles(4)
    assert default_profiles(6)[:4] == profiles  # adding sites does not change existing ones
    assert [p.name for p in profiles] == ["site-a", "site-b", "site-c", "site-d"]
    for field in (
        "hu_offset",
        "noise_sigma",
        "blur_sigma_mm",
        "lesion_prevalence",
        "lesion_radius_mm",
        "spacing",
    ):
        assert len({getattr(p, field) for p in profiles}) == 4, field
    for p in profiles:
        assert 0.85 * 3.125 <= p.spacing[0] <= 1.25 * 3.125
        assert p.hu_offset == int(p.hu_offset)
    thick = [p.name for p in profiles if p.spacing[2] > 1.5 * p.spacing[0]]
    assert thick == ["site-c"]


def test_iid_profiles_differ_only_by_name() -> None:
    profiles = iid_profiles(3)
    assert [p.name for p in profiles] == ["site-a", "site-b", "site-c"]
    assert len({dataclasses.replace(p, name="x") for p in profiles}) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"lesion_prevalence": 1.5},
        {"noise_sigma": -1.0},
        {"lesion_radius_mm": (5.0, 3.0)},
        {"spacing": (0.0, 1.0, 1.0)},
        {"name": "a/b"},
        {"name": ""},
    ],
)
def test_profile_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CLEAN, **bad)


# --- phantom: tissues and geometry ----------------------------------------------------------

# Independently known CT numbers (HU) of each tissue.
EXPECTED_HU = {
    Tissue.BONE: (700, 1500),
    Tissue.CSF: (0, 15),
    Tissue.GREY: (35, 45),
    Tissue.WHITE: (20, 30),
    Tissue.LESION: (50, 90),
}


@pytest.mark.parametrize("tissue", list(EXPECTED_HU))
def test_tissue_median_hu_is_in_its_clinical_range(clean_case: SynthCase, tissue: Tissue) -> None:
    values = clean_case.image[clean_case.tissue == tissue]
    assert values.size >= 10
    low, high = EXPECTED_HU[tissue]
    assert low <= np.median(values) <= high


def test_lesion_is_hyperdense_and_matches_label(clean_case: SynthCase) -> None:
    label = clean_case.label
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert np.array_equal(label, (clean_case.tissue == Tissue.LESION).astype(np.uint8))
    assert 50 <= np.median(clean_case.image[label == 1]) <= 90
    brain = np.isin(clean_case.tissue, [Tissue.GREY, Tissue.WHITE])
    assert np.median(clean_case.image[label == 1]) > np.median(clean_case.image[brain]) + 15


def test_far_outside_the_head_is_air(clean_case: SynthCase) -> None:
    image = clean_case.image
    corners = image[[0, -1]][:, [0, -1]][:, :, [0, -1]]
    assert np.all(corners == -1000)
    assert np.all(image[:3] == -1000)  # 3 slabs at the right edge, >= 88 mm from the centre


def test_skull_is_found_along_the_anterior_posterior_axis(clean_case: SynthCase) -> None:
    grid = clean_case.grid
    i, k = grid.shape[0] // 2, grid.shape[2] // 2
    y_mm = grid.world_axes()[1].ravel()
    line_tissue = clean_case.tissue[i, :, k]
    line_hu = clean_case.image[i, :, k]
    for side in (1, -1):
        bone = (line_tissue == Tissue.BONE) & (side * y_mm > 0)
        assert bone.any()
        # Head semi-axis A-P is 78-86 mm (+/- small deformation, pose); skull 5-8 mm thick.
        assert np.all((np.abs(y_mm[bone]) > 60) & (np.abs(y_mm[bone]) < 100))
        assert np.all((line_hu[bone] >= 700) & (line_hu[bone] <= 1500))


def test_lesions_replace_brain_never_skull(clean_case: SynthCase) -> None:
    twin = make_case(has_lesion=False)  # same subject, drawn without a lesion
    assert not twin.label.any()
    inside = clean_case.label == 1
    assert set(np.unique(twin.tissue[inside])) <= {Tissue.CSF, Tissue.GREY, Tissue.WHITE}
    assert np.array_equal(twin.tissue[~inside], clean_case.tissue[~inside])


def sphere_lesion(centre_mm: list[float], radius_mm: list[float]) -> Lesion:
    blob = Ellipsoid(
        centre_mm=np.array(centre_mm), rotation=np.eye(3), semi_axes_mm=np.array(radius_mm)
    )
    return Lesion(blobs=(blob,), base_hu=70.0)


def test_lesion_rasterises_to_its_analytic_volume() -> None:
    grid = Grid(shape=(100, 100, 100), spacing=(2.0, 2.0, 2.0))
    anatomy = draw_anatomy(np.random.default_rng(0))
    phantom = render(anatomy, (sphere_lesion([5.0, -10.0, 8.0], [12.0, 9.0, 7.0]),), grid)
    volume_mm3 = phantom.label.sum() * 8.0
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 12 * 9 * 7, rel=0.05)
    assert 64 <= phantom.hu[phantom.label == 1].mean() <= 76  # base 70 HU plus mild texture


def test_lesion_reaching_the_skull_is_cut_at_the_inner_table() -> None:
    grid = Grid(shape=(100, 100, 100), spacing=(2.0, 2.0, 2.0))
    anatomy: Anatomy = draw_anatomy(np.random.default_rng(1))
    # Centred 2 mm inside the inner table on the head's anterior axis, 10 mm radius.
    centre = [0.0, float(anatomy.semi_axes_mm[1]) - anatomy.skull_mm - 2.0, 0.0]
    with_lesion = render(anatomy, (sphere_lesion(centre, [10.0, 10.0, 10.0]),), grid)
    without = render(anatomy, (), grid)
    labelled = with_lesion.label == 1
    assert labelled.sum() > 10
    assert not np.isin(without.tissue[labelled], [Tissue.BONE, Tissue.AIR]).any()
    world_centre = anatomy.rotation @ centre + anatomy.shift_mm
    x, y, z = grid.world_axes()
    near = (x - world_centre[0]) ** 2 + (y - world_centre[1]) ** 2 + (z - world_centre[2]) ** 2
    assert (without.tissue[near < 8.0**2] == Tissue.BONE).any()  # the sphere did reach bone


# --- scanner model ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [25.0, -13.0])
def test_hu_offset_shifts_every_voxel_exactly(clean_case: SynthCase, offset: float) -> None:
    shifted = make_case(dataclasses.replace(CLEAN, hu_offset=offset))
    difference = shifted.image.astype(np.int32) - clean_case.image
    assert np.all(difference == offset)
    assert np.array_equal(shifted.label, clean_case.label)


def test_noise_sigma_is_the_std_of_added_noise(clean_case: SynthCase) -> None:
    noisy = make_case(dataclasses.replace(CLEAN, noise_sigma=20.0))
    head = clean_case.clean_hu > -900  # away from the -1024 storage clip in air
    difference = (noisy.image.astype(np.float64) - clean_case.image)[head]
    assert difference.size > 10_000
    assert abs(difference.std() - 20.0) < 2.0
    assert abs(difference.mean()) < 1.0
    assert np.array_equal(noisy.label, clean_case.label)


def test_blur_smooths_the_image_but_not_the_label(clean_case: SynthCase) -> None:
    blurred = make_case(dataclasses.replace(CLEAN, blur_sigma_mm=3.0))
    assert np.array_equal(blurred.label, clean_case.label)
    sharp_steps = np.abs(np.diff(clean_case.image.astype(np.float64), axis=0)).mean()
    blurred_steps = np.abs(np.diff(blurred.image.astype(np.float64), axis=0)).mean()
    assert blurred_steps < 0.8 * sharp_steps
    # A normalised Gaussian kernel preserves the total HU (air at the borders, up to rounding).
    assert abs(blurred.image.mean() - clean_case.image.mean()) < 0.5


# --- grids --------------------------------------------------------------------------------


def test_grid_covers_the_field_of_view_centred_at_the_origin() -> None:
    grid = Grid.for_profile(dataclasses.replace(CLEAN, spacing=(2.5, 3.0, 5.0)), 64)
    assert grid.shape == (80, 67, 40)  # 200 mm / spacing, rounded
    assert np.allclose(np.diag(grid.affine)[:3], (2.5, 3.0, 5.0))
    centre = [(n - 1) / 2 for n in grid.shape]
    assert np.allclose(grid.affine @ [*centre, 1.0], [0.0, 0.0, 0.0, 1.0])


def test_size_scales_the_spacing() -> None:
    grid = Grid.for_profile(dataclasses.replace(CLEAN, spacing=(3.0, 3.0, 5.0)), 32)
    assert grid.spacing == (6.0, 6.0, 10.0)


def test_other_spacing_samples_the_same_anatomy() -> None:
    coarse = make_case(size=64)
    fine = make_case(dataclasses.replace(CLEAN, spacing=(2.5, 2.5, 4.0)), size=64)
    assert coarse.grid.shape != fine.grid.shape

    def volume_ml(case: SynthCase, tissues: list[Tissue]) -> float:
        voxel_ml = float(np.prod(case.grid.spacing)) / 1000
        return float(np.isin(case.tissue, tissues).sum()) * voxel_ml

    head = [Tissue.BONE, Tissue.CSF, Tissue.GREY, Tissue.WHITE, Tissue.LESION]
    intracranial = head[1:]
    for tissues in (head, intracranial):
        assert volume_ml(fine, tissues) == pytest.approx(volume_ml(coarse, tissues), rel=0.03)
    # An adult head of 130-180 mm is roughly 1.3-2.2 litres.
    assert 1300 < volume_ml(coarse, head) < 2200


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_arrays_and_other_seeds_differ(clean_case: SynthCase) -> None:
    noisy = dataclasses.replace(CLEAN, noise_sigma=10.0)
    first, again = make_case(noisy), make_case(noisy)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.label, again.label)
    for other in (
        make_case(noisy, seed=1),
        make_case(noisy, index=1),
        make_case(dataclasses.replace(noisy, name="site-other")),
    ):
        assert not np.array_equal(first.image, other.image)


# --- on disk ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_cases", "prevalence", "expected"),
    [(0, 0.5, 0), (8, 0.0, 1), (8, 0.5, 4), (8, 1.0, 8), (2, 0.3, 1), (5, 0.5, 3), (3, 0.99, 3)],
)
def test_lesion_case_count(n_cases: int, prevalence: float, expected: int) -> None:
    assert lesion_case_count(n_cases, prevalence) == expected


def read_checked_case(
    site: Path, entry: dict[str, str], spacing: tuple[float, float, float]
) -> npt.NDArray[np.generic]:
    """Load one dataset.json entry, check its NIfTI geometry and dtypes, return the label."""
    image_nii, label_nii = load_nifti(site / entry["image"]), load_nifti(site / entry["label"])
    image, label = np.asarray(image_nii.dataobj), np.asarray(label_nii.dataobj)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.shape == label.shape
    assert np.allclose(image_nii.affine, label_nii.affine)
    assert np.allclose(np.diag(image_nii.affine)[:3], spacing)
    assert np.allclose(image_nii.header["pixdim"][1:4], spacing)
    assert int(image_nii.header["qform_code"]) == int(image_nii.header["sform_code"]) == 1
    centre = [(n - 1) / 2 for n in image.shape]
    assert np.allclose(image_nii.affine @ [*centre, 1.0], [0, 0, 0, 1], atol=1e-3)
    return label


@pytest.mark.parametrize(("prevalence", "expected"), [(0.0, (1, 1, 1)), (1.0, (3, 2, 2))])
def test_generate_site_writes_an_msd_dataset(
    tmp_path: Path, prevalence: float, expected: tuple[int, int, int]
) -> None:
    profile = dataclasses.replace(CLEAN, lesion_prevalence=prevalence, spacing=(3.0, 3.5, 5.0))
    site = generate_site(
        tmp_path / "site", profile, n_train=3, n_val=2, n_test=2, size=TINY, seed=7
    )
    manifest = json.loads((site / "dataset.json").read_text())
    assert manifest["modality"] == {"0": "CT"}
    assert manifest["labels"] == {"0": "background", "1": "haemorrhage"}
    assert manifest["numTraining"] == 3
    assert manifest["fedvox_profile"] == profile.to_json() and manifest["seed"] == 7

    lesion_counts = []
    for key, folder in (("training", "imagesTr"), ("validation", "imagesTr"), ("test", "imagesTs")):
        lesion_cases = 0
        for entry in manifest[key]:
            assert entry["image"].startswith(f"./{folder}/")
            label = read_checked_case(site, entry, profile.grid_spacing(TINY))
            lesion_cases += int(label.any())
            name = Path(entry["image"]).name.removesuffix(".nii.gz")
            assert label.any() == (name in manifest["fedvox_lesion_cases"])
        lesion_counts.append(lesion_cases)
    # Prevalence 0 still gives every split exactly one lesion case (lesion_case_count's rule).
    assert tuple(lesion_counts) == expected


def federate(out_dir: Path, seed: int, progress: Callable[[str], None] | None = None) -> list[Path]:
    return generate_federation(
        out_dir, 2, seed=seed, size=TINY, n_train=2, n_val=1, n_test=1, progress=progress
    )


def test_generate_federation_is_idempotent_and_reproducible(tmp_path: Path) -> None:
    messages: list[str] = []
    dirs = federate(tmp_path / "a", 3, messages.append)
    assert [d.name for d in dirs] == ["site-a", "site-b"]
    assert len(messages) == 2 * 4
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii.gz"))
    assert len(files) == 2 * 4 * 2
    stamps = {f: (tmp_path / "a" / f).stat().st_mtime_ns for f in files}

    messages.clear()
    (dirs[1] / "dataset.json").unlink()  # an interrupted site is regenerated, the other kept
    federate(tmp_path / "a", 3, messages.append)
    assert messages[0] == "site-a: dataset.json exists, skipped" and len(messages) == 1 + 4
    assert all(
        (tmp_path / "a" / f).stat().st_mtime_ns == stamps[f]
        for f in files
        if f.parts[0] == "site-a"
    )

    federate(tmp_path / "b", 3)
    federate(tmp_path / "c", 4)
    for f in files:
        same = (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert same, f
    assert any(
        not np.array_equal(load_array(tmp_path / "a" / f), load_array(tmp_path / "c" / f))
        for f in files
    )


def test_generate_federation_rejects_mismatched_profiles(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profiles"):
        generate_federation(tmp_path, 3, profiles=default_profiles(2))
    with pytest.raises(ValueError, match="unique"):
        generate_federation(tmp_path, 2, profiles=[CLEAN, CLEAN])


# --- command line ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_generates_sites_and_reports_each_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(
        "--out",
        str(tmp_path),
        "--sites",
        "2",
        "--size",
        "16",
        "--train",
        "1",
        "--val",
        "1",
        "--test",
        "1",
        "--iid",
    )
    assert cli.run(args) == 0
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 2 * 3
    assert "site-a, site-b" in captured.out
    profiles = [
        json.loads((tmp_path / s / "dataset.json").read_text())["fedvox_profile"]
        for s in ("site-a", "site-b")
    ]
    assert {**profiles[0], "name": ""} == {**profiles[1], "name": ""}


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--sites", "0"], "--sites"),
        (["--size", "8"], "--size"),
        (["--val", "-1"], "--val"),
        (["--seed", "-2"], "--seed"),
    ],
)
def test_cli_rejects_bad_input_naming_the_option(
    tmp_path: Path, argv: list[str], option: str
) -> None:
    with pytest.raises(SystemExit, match=option):
        cli.run(parse("--out", str(tmp_path / "out"), *argv))
    assert not (tmp_path / "out").exists()
