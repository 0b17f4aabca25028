"""`fedvox simulate --strategy NAME` completes for every registered scheme: a real server and
two real client processes per scheme, one tiny training round, mTLS as users get it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedvox.server.strategies import REGISTRY

pytestmark = pytest.mark.integration

TINY = {
    "evaluate": "false",
    "train.local_steps": "2",
    "train.patch_size": "16",
    "model.channels": "[4, 8, 16]",
    "model.strides": "[2, 2]",
    "model.num_res_units": "1",
}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedvox.synth import generate_federation

    root = tmp_path_factory.mktemp("sites")
    generate_federation(root, 2, seed=4, size=24, n_train=2, n_val=1, n_test=1)
    return root


@pytest.mark.parametrize("strategy", sorted(REGISTRY))
def test_simulate_completes(strategy: str, sites: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fedvox.cli", "simulate", "--data", str(sites),
               "--rounds", "1", "--strategy", strategy, "--out", str(tmp_path / "run"),
               *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (round_1,) = metrics["rounds"]
    assert sorted(round_1["sites"]) == ["site-a", "site-b"]
    assert all(math.isfinite(v) for v in round_1["train_loss"].values())
    assert (tmp_path / "run" / "state" / "checkpoints" / "round-000001").is_dir()
