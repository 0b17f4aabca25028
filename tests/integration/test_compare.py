"""`fedvox compare` end to end: 2 schemes and both baselines on 2 synthetic sites, 2 rounds, 1 seed,
tiny volumes and model, through real server and client processes. Run twice into fresh folders
(at the same time, to save wall-clock time): the results must match exactly; a third run into
the first folder must skip every finished arm."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ARGS = [
    "--scenario",
    "scanner-shift",
    "--strategies",
    "fedavg,fedbn",
    "--seeds",
    "1",
    "--rounds",
    "2",
    "--local-steps",
    "3",
    "--sites",
    "2",
    "--size",
    "24",
    "--train-cases",
    "2",
    "--val-cases",
    "1",
    "--test-cases",
    "1",
    "--threads",
    "2",
    "--timeout",
    "300",
    "--set",
    "train.patch_size=16",
    "--set",
    "model.channels=[4,8]",
    "--set",
    "model.strides=[2]",
    "--set",
    "model.num_res_units=0",
]
ARMS = ["fedavg", "fedbn", "local-only", "pooled"]
OUTPUTS = [
    "results.json",
    "results.csv",
    "report.md",
    "manifest.json",
    "convergence.png",
    "sites.png",
]


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "fedvox.cli", "compare", *ARGS, "--out", str(out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    processes = [
        subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for out in (first, second)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stdout + stderr
        assert "ETA" in stderr  # the progress bar, on stderr
    return first, second


def test_outputs_exist_parse_and_hold_finite_numbers(runs: tuple[Path, Path]) -> None:
    out = runs[0]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert results["arms"] == ARMS
    assert results["test_sets"] == ["site-a", "site-b", "pooled"]
    assert sorted((r["arm"], r["seed"]) for r in results["runs"]) == sorted(
        (arm, 0) for arm in ARMS
    )
    for run in results["runs"]:
        for test in results["test_sets"]:
            assert math.isfinite(run["dice"][test]), (run["arm"], test)
        assert len(run["curve"]) == 3  # rounds 0..2
        assert run["total_local_steps"] == 2 * 2 * 3  # the same budget for every arm
    by_arm = {r["arm"]: r for r in results["runs"]}
    assert by_arm["pooled"]["local_steps_per_round"] == 6
    assert by_arm["local-only"]["local_steps_per_round"] == 3
    for arm in ARMS:
        for test in results["test_sets"]:
            assert math.isfinite(results["summary"][arm][test]["mean"])
    assert results["winner"]["pooled"] in ARMS
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(ARMS) * 3
    assert all(math.isfinite(float(row["dice"])) for row in rows)
    report = (out / "report.md").read_text()
    assert "FL/pooled" in report and "![convergence](convergence.png)" in report
    for png in ("convergence.png", "sites.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [0]
    assert manifest["config"]["rounds"] == 2
    assert set(manifest["data_digests"]["0"]) == {"site-a", "site-b"}
    assert manifest["sampled_sites"]["fedavg/seed-0"]["federation"] == [["site-a", "site-b"]] * 2
    assert manifest["code"]["commit"] is None or len(manifest["code"]["commit"]) == 40


def test_same_seed_reproduces_results_exactly(runs: tuple[Path, Path]) -> None:
    first, second = runs
    assert (first / "results.json").read_bytes() == (second / "results.json").read_bytes()
    assert (first / "results.csv").read_bytes() == (second / "results.csv").read_bytes()


def test_rerun_skips_finished_arms(runs: tuple[Path, Path]) -> None:
    out = runs[0]
    before = (out / "results.json").read_bytes()
    results = sorted((out / "runs").glob("*/seed-*/result.json"))
    assert len(results) == len(ARMS)
    stamps = [p.stat().st_mtime_ns for p in results]
    started = time.monotonic()
    done = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 of 4 arms already done" in done.stderr
    assert [p.stat().st_mtime_ns for p in results] == stamps  # no arm ran again
    assert (out / "results.json").read_bytes() == before
    assert time.monotonic() - started < 120
