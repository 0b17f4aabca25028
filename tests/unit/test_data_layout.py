"""Finding a site's cases: dataset.json, or imagesTr/labelsTr folders of NIfTI and DICOM series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedvox.client.layout import discover
from tests.ctdata import box_head, box_site, ras_affine, write_case, write_series

AFFINE = ras_affine((2.0, 2.0, 2.0))


def names(cases: list[dict[str, str]], key: str = "image") -> list[str]:
    return [Path(c[key]).name for c in cases]


def test_dataset_json_lists_resolve_against_the_root(tmp_path: Path) -> None:
    box_site(tmp_path, n_train=3, n_test=1)
    layout = discover(tmp_path)
    assert layout.errors == [] and layout.source == "dataset.json"
    assert names(layout.splits["training"]) == [f"training_{i}.nii.gz" for i in range(3)]
    assert names(layout.splits["test"], "label") == ["test_0.nii.gz"]
    assert layout.splits["validation"] == []  # listed as empty: nothing is carved out
    assert all(Path(p).is_absolute() for c in layout.splits["training"] for p in c.values())
    assert layout.labels == {0: "background", 1: "lesion"}


def test_missing_files_are_named(tmp_path: Path) -> None:
    meta = box_site(tmp_path, n_train=2)
    (tmp_path / meta["training"][1]["label"]).unlink()
    (error,) = discover(tmp_path).errors
    assert error.startswith(f"{tmp_path / meta['training'][1]['label']}: missing (")
    assert error.endswith("dataset.json: training[1] lists it)")


def test_msd_test_lists_of_bare_paths_without_labels_are_ignored(tmp_path: Path) -> None:
    meta = box_site(tmp_path, n_train=2, n_test=1)
    meta["test"] = [meta["test"][0]["image"]]  # MSD style: a bare image path
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    layout = discover(tmp_path)
    assert layout.errors == [] and layout.splits["test"] == []
    assert layout.warnings == [f"{tmp_path / meta['test'][0]}: test image without a label, ignored"]


def test_a_training_image_without_label_is_an_error(tmp_path: Path) -> None:
    meta = box_site(tmp_path, n_train=2)
    del meta["training"][0]["label"]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    assert discover(tmp_path).errors == [
        f"{tmp_path / meta['training'][0]['image']}: training image without a label "
        f"({tmp_path / 'dataset.json'}: training[0])"
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modality": {"0": "MRI"}}, "declares modality 'MRI', not CT"),
        ({"modality": {"0": "CT", "1": "CT"}}, "declares 2 image channels"),
        ({"training": "imagesTr"}, "'training' must be a list"),
        ({"labels": {"zero": "background"}}, "'labels' keys must be integers"),
    ],
)
def test_dataset_json_declarations_are_checked(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    meta = box_site(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, **change}))
    assert any(message in e for e in discover(tmp_path).errors), discover(tmp_path).errors


def test_invalid_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("{not json")
    (error,) = discover(tmp_path).errors
    assert error.startswith(f"{tmp_path / 'dataset.json'}: not valid JSON")


def test_a_case_in_two_splits_is_an_error(tmp_path: Path) -> None:
    meta = box_site(tmp_path, n_train=2)
    meta["validation"] = [meta["training"][0]]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    assert discover(tmp_path).errors[-1].endswith("listed in both training and validation")


def test_folders_of_nifti_and_dicom_series_are_discovered(tmp_path: Path) -> None:
    hu, label = box_head()
    write_case(tmp_path, "ct_001_0000", hu, label, AFFINE)  # nnU-Net channel suffix on the image
    (tmp_path / "labelsTr/ct_001_0000.nii.gz").rename(tmp_path / "labelsTr/ct_001.nii.gz")
    write_series(tmp_path / "imagesTr/ct_002", hu[:, :, :3].astype(float))  # a series folder
    write_case(tmp_path, "ct_002", hu, label, AFFINE)
    (tmp_path / "imagesTr/ct_002.nii.gz").unlink()
    write_case(tmp_path, "ct_009", hu, label, AFFINE, ("imagesTs", "labelsTs"))
    (tmp_path / "imagesTr/README.txt").write_text("notes")
    layout = discover(tmp_path)
    assert layout.errors == [] and layout.source == "imagesTr/"
    cases = layout.splits["training"] + layout.splits["validation"]
    assert sorted(names(cases)) == ["ct_001_0000.nii.gz", "ct_002"]
    assert sorted(names(cases, "label")) == ["ct_001.nii.gz", "ct_002.nii.gz"]
    assert len(layout.splits["validation"]) == 1  # a fifth of two cases, at least one
    assert names(layout.splits["test"]) == ["ct_009.nii.gz"]
    assert layout.warnings == [
        f"{tmp_path / 'imagesTr/README.txt'}: neither NIfTI nor a series folder, ignored"
    ]


def test_folder_validation_split_is_stable_when_cases_are_added(tmp_path: Path) -> None:
    hu, label = box_head((20, 20, 12), lesion=False)
    for i in range(10):
        write_case(tmp_path, f"case_{i:02d}", hu, label, AFFINE)
    before = names(discover(tmp_path).splits["validation"])
    assert len(before) == 2  # a fifth of ten
    for i in range(10, 15):
        write_case(tmp_path, f"case_{i:02d}", hu, label, AFFINE)
    after = names(discover(tmp_path).splits["validation"])
    assert len(after) == 3 and len(set(before) & set(after)) >= 1


def test_folder_image_without_label_and_loose_dicom_files(tmp_path: Path) -> None:
    hu, label = box_head()
    write_case(tmp_path, "ct_001", hu, label, AFFINE)
    (tmp_path / "labelsTr/ct_001.nii.gz").unlink()
    slices = write_series(tmp_path / "series", np.zeros((4, 4, 1)))
    slices[0].rename(tmp_path / "imagesTr/loose.dcm")
    errors = discover(tmp_path).errors
    assert (
        f"{tmp_path / 'imagesTr/ct_001.nii.gz'}: training image without a label (imagesTr/)"
        in errors
    )
    assert any("loose.dcm: a loose DICOM file in imagesTr/" in e for e in errors)


@pytest.mark.parametrize("make", ["nothing", "empty imagesTr", "not a folder"])
def test_an_empty_site_says_what_is_missing(tmp_path: Path, make: str) -> None:
    root = tmp_path / "site"
    if make == "empty imagesTr":
        (root / "imagesTr").mkdir(parents=True)
    elif make == "nothing":
        root.mkdir()
    expected = {
        "nothing": "no dataset.json and no imagesTr/ folder: a site needs one or the other "
        "(see fedvox check-data --help)",
        "empty imagesTr": "no training cases (imagesTr/ lists none)",
        "not a folder": "data root is not a folder",
    }[make]
    assert discover(root).errors == [f"{root}: {expected}"]
