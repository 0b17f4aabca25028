"""`fedvox ingest`: a messy DICOM export becomes a checked NIfTI site; bad series are named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedvox.client import ingest
from fedvox.client.checks import check_site
from fedvox.client.volume import read_volume
from fedvox.synth.writer import write_nifti
from tests.ctdata import box_head, write_series


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """Two good CT series sharing one folder, an MR series and a CT series missing a slice."""
    src = tmp_path / "export"
    hu = box_head((40, 40, 24))[0][:, :, 8:14].astype(float)
    write_series(src / "mixed", hu, tags={"PatientID": "P1", "SeriesNumber": 3})
    for path in write_series(src / "tmp", hu, origin=(0, 0, 50), tags={"PatientID": "P2"}):
        path.rename(src / "mixed" / f"other_{path.name}")
    write_series(src / "mr", hu, modality="MR", tags={"PatientID": "P3"})
    gap = write_series(src / "gap", hu, tags={"PatientID": "P4"})
    gap[2].unlink()
    (src / "README.txt").write_text("export notes")
    return src


def test_ingest_converts_good_series_and_names_bad_ones(tmp_path: Path, export: Path) -> None:
    dst = tmp_path / "site"
    converted, problems = ingest.ingest(export, dst, None)
    assert sorted(c.name for c in converted) == ["P1_3", "P2_0"]
    assert len(problems) == 2
    assert any("modality MR (6 files), not CT" in p for p in problems)
    assert any("1 missing slice" in p and str(export / "gap") in p for p in problems)
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["training"] == [] and sorted(meta["test"]) == [
        "imagesTr/P1_3.nii.gz",
        "imagesTr/P2_0.nii.gz",
    ]
    image = nib.load(dst / "imagesTr/P1_3.nii.gz")
    assert isinstance(image, nib.Nifti1Image)
    assert image.header["datatype"] == 4  # NIfTI's code for int16: whole HU stay whole
    expected = box_head((40, 40, 24))[0][:, :, 8:14].transpose(1, 0, 2)  # (column, row, slice)
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)
    assert sorted(p.name for p in (dst / "imagesTr").iterdir()) == ["P1_3.nii.gz", "P2_0.nii.gz"]


def test_ingest_with_labels_makes_a_training_site(tmp_path: Path, export: Path) -> None:
    ingest.ingest(export, tmp_path / "probe", None)
    probe = read_volume(tmp_path / "probe/imagesTr/P1_3.nii.gz")
    labels = tmp_path / "labels"
    labels.mkdir()
    label = (probe.array > 50).astype(np.uint8)  # the box's skull, as a stand-in label
    write_nifti(labels / "P1_3.nii.gz", label, probe.affine)
    write_nifti(labels / "P2_0.nii.gz", label[:, :, :3], probe.affine)  # wrong shape
    args = argparse.Namespace(src=export, dst=tmp_path / "site", labels=labels)
    assert ingest.run(args) == 1  # series were skipped
    meta = json.loads((tmp_path / "site/dataset.json").read_text())
    assert meta["training"] == [{"image": "imagesTr/P1_3.nii.gz", "label": "labelsTr/P1_3.nii.gz"}]
    assert not (tmp_path / "site/imagesTr/P2_0.nii.gz").exists()  # nothing half-converted
    report = check_site(tmp_path / "site")
    assert report.ok and len(report.cases) == 1
    with pytest.raises(ValueError, match=r"already holds a dataset\.json"):
        ingest.run(args)
