"""`fedvox check-data` and the client's pre-round check: statistics of box heads whose HU, shape
and lesion volume are known by construction, and one precise error per kind of bad input."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pytest
import torch

from fedvox.admin import format_site_data
from fedvox.client import check_cli
from fedvox.client.checks import INFO_ERROR, INFO_SUMMARY, check_site
from fedvox.client.connection import Connection
from fedvox.client.runner import Runner
from fedvox.client.trainer import MonaiTrainer
from fedvox.client.volume import DataError, read_nifti
from fedvox.server.sites import SiteRegistry
from fedvox.synth.writer import write_nifti
from tests.ctdata import box_head, box_site, ras_affine

# box_head((40, 40, 24)): a 28x28x16 head of 5632 skull voxels (+1000 HU), 6848 brain (+35) and
# 64 lesion (+70); so 54.6% of the head is brain: p5..p50 = 35 HU, p75 and p95 = 1000 HU
BOX_SUMMARY = {
    "layout": "dataset.json",
    "cases": {"training": 3, "validation": 0, "test": 1},
    "errors": 0,
    "warnings": 0,
    "shape": {"min": [40, 40, 24], "max": [40, 40, 24]},
    "spacing_mm": {"min": [2.0, 2.0, 2.0], "max": [2.0, 2.0, 2.0]},
    "orientation": {"RAS": 4},
    "hu": {"p5": 35.0, "p25": 35.0, "p50": 35.0, "p75": 1000.0, "p95": 1000.0},
    "hu_range": [-1000.0, 1000.0],
    "labels": [0, 1],
    "lesion_cases": 3,  # training 0 and 2, test 0
    "lesion_ml_median": 0.512,  # 64 voxels of 8 mm^3
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    box_site(tmp_path / "site", n_train=3, n_test=1)
    return tmp_path / "site"


def test_summary_of_a_good_site(site: Path) -> None:
    report = check_site(site)
    assert report.ok, report.errors
    assert report.summary() == BOX_SUMMARY
    info = report.info()
    assert set(info) == {INFO_SUMMARY} and json.loads(info[INFO_SUMMARY]) == BOX_SUMMARY
    assert len(info[INFO_SUMMARY]) < 600  # statistics only: it travels in RegisterRequest.info
    assert [len(v) for v in report.datalist.values()] == [3, 0, 1]


def test_the_status_line_shows_the_summary(site: Path) -> None:
    assert format_site_data(check_site(site).info()) == (
        "3/0/1 cases (tr/val/test), shape 40x40x24, spacing 2.00x2.00x2.00 mm, RAS 4, "
        "head HU p5/50/95 35/35/1000, labels 0,1, lesions in 3 (median 0.512 ml)"
    )


def test_orientation_is_reported_as_stored_and_shapes_in_ras_order(site: Path) -> None:
    hu, label = box_head((40, 30, 24))
    lps = np.diag([-2.0, -3.0, 2.0, 1.0])  # i runs to the left, j to the back
    write_nifti(site / "imagesTr/training_0.nii.gz", hu.transpose(1, 0, 2), lps[:, [1, 0, 2, 3]])
    write_nifti(site / "labelsTr/training_0.nii.gz", label, lps)  # same grid, stored other way
    report = check_site(site)
    assert report.ok, report.errors
    case = report.cases[0]
    assert (case.axcodes, case.shape, case.spacing) == ("PLS", (40, 30, 24), (2.0, 3.0, 2.0))
    assert report.summary()["orientation"] == {"PLS": 1, "RAS": 3}


def corrupt(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes()[:-1000])[:-30])


def set_image(path: Path, values: Any) -> None:
    write_nifti(path, np.asarray(values), ras_affine((2.0, 2.0, 2.0)))


BAD_INPUTS = {
    "corrupt NIfTI": ("imagesTr/training_1", corrupt, "not a readable NIfTI file"),
    "label shape": (
        "labelsTr/training_1",
        lambda p: set_image(p, np.zeros((40, 40, 20), np.uint8)),
        "label shape 40x40x20 differs from its image's 40x40x24",
    ),
    "label grid": (
        "labelsTr/training_1",
        lambda p: write_nifti(p, box_head()[1], ras_affine((2.0, 2.0, 2.0), (0.0, 0.0, 4.0))),
        "label grid differs from its image's",
    ),
    "non-CT": (
        "imagesTr/training_1",
        lambda p: set_image(p, np.full((40, 40, 24), 120, np.int16)),
        "does not look like CT in HU: darkest voxel 120",
    ),
    "label values": (
        "labelsTr/training_1",
        lambda p: set_image(p, box_head()[1] * 2),
        "label values [2] not among the declared [0, 1]",
    ),
    "fractional label": (
        "labelsTr/training_1",
        lambda p: set_image(p, box_head()[1] * 0.5),
        "label values must be integers",
    ),
    "all air": (
        "imagesTr/training_1",
        lambda p: set_image(p, np.full((40, 40, 24), -1000, np.int16)),
        "no head: no voxel above -500 HU",
    ),
    "NaN": (
        "imagesTr/training_1",
        lambda p: set_image(p, np.where(box_head()[1], np.nan, 0.0)),
        "holds NaN or infinite values",
    ),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_each_bad_input_is_named(site: Path, kind: str) -> None:
    name, damage, message = BAD_INPUTS[kind]
    path = site / f"{name}.nii.gz"
    damage(path)
    report = check_site(site)
    assert not report.ok
    (error,) = report.errors
    assert error.startswith(f"{path}: ") and message in error, error
    assert len(report.cases) == 3  # the other cases are still measured
    assert report.datalist == {"training": [], "validation": [], "test": []}
    assert report.info()[INFO_ERROR] == f"1 problem(s): {error.replace(f'{site}/', '')}"
    assert report.summary()["errors"] == 1


def test_every_bad_file_is_listed(site: Path) -> None:
    corrupt(site / "imagesTr/training_0.nii.gz")
    (site / "labelsTs/test_0.nii.gz").unlink()
    errors = check_site(site).errors
    assert len(errors) == 2
    assert errors[0].startswith(f"{site / 'labelsTs/test_0.nii.gz'}: missing")
    assert errors[1].startswith(f"{site / 'imagesTr/training_0.nii.gz'}: not a readable NIfTI")


def test_check_data_command_reports_each_site(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site.parent / "bad"
    box_site(bad, n_train=2, n_test=0)
    (bad / "labelsTr/training_1.nii.gz").unlink()
    args = argparse.Namespace(dirs=[site.parent], json=False)
    assert check_cli.run(args) == 1
    out = capsys.readouterr().out
    assert f"site {bad} (dataset.json): 1 PROBLEM(S)" in out
    assert f"error: {bad / 'labelsTr/training_1.nii.gz'}: missing" in out
    assert f"site {site} (dataset.json): OK" in out
    assert "training   training_0.nii.gz           40x40x24      2.00x2.00x2.00     RAS" in out
    assert check_cli.run(argparse.Namespace(dirs=[site], json=True)) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["summary"] == BOX_SUMMARY and len(report["cases"]) == 4


def test_the_server_samples_no_site_with_a_data_error() -> None:
    registry = SiteRegistry(site_timeout_s=60)
    registry.register("site-a", 3, {INFO_SUMMARY: "{}"})
    registry.register("site-b", 0, {INFO_SUMMARY: "{}", INFO_ERROR: "1 problem(s): x"})
    assert registry.alive_ids() == ["site-a"]


class FakeConnection:
    site_id = "site-x"

    def __init__(self) -> None:
        self.registered: list[tuple[int, dict[str, str]]] = []

    def register(self, num_examples: int, info: dict[str, str]) -> object:
        self.registered.append((num_examples, dict(info)))
        return argparse.Namespace(federation_id="f", heartbeat_interval_seconds=1.0)

    def get_task(self, timeout: float) -> object:
        raise AssertionError("a site with bad data must not ask for tasks")


def test_a_bad_site_registers_its_problem_then_stops(site: Path) -> None:
    (site / "labelsTr/training_1.nii.gz").unlink()
    trainer = MonaiTrainer("site-x", site, torch.device("cpu"))
    connection = FakeConnection()
    runner = Runner(cast(Connection, connection), trainer, info={"device": "cpu"})
    with pytest.raises(DataError, match=r"site site-x cannot take part: 1 problem\(s\): .*missing"):
        runner.run()
    ((examples, info),) = connection.registered
    assert examples == 0 and info["device"] == "cpu"
    assert "labelsTr/training_1.nii.gz: missing" in info[INFO_ERROR]
    assert json.loads(info[INFO_SUMMARY])["cases"] == {"training": 2, "validation": 0, "test": 1}
    assert format_site_data(info).endswith("ERROR " + info[INFO_ERROR])


def test_nifti_reader_applies_the_scale_of_the_header(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.full((4, 4, 4), 100, np.int16), np.eye(4))  # type: ignore[no-untyped-call]
    image.header.set_slope_inter(2.0, -1024.0)  # type: ignore[no-untyped-call]
    nib.save(image, tmp_path / "scaled.nii")
    assert (read_nifti(tmp_path / "scaled.nii").array == 2.0 * 100 - 1024).all()
