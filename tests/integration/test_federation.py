"""A whole federation: the real `fedvox simulate` CLI, a real server process and three real
MONAI client processes talking gRPC on loopback, then a server restart on the same state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.integration

# enough local training for the lesion Dice to move clearly within 3 rounds on 2 CPU cores
TRAIN = ["--set", "train.local_steps=150", "--set", "round_timeout_s=300"]


def simulate(out: Path, data: Path, rounds: int, *extra: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "fedvox.cli",
        "simulate",
        "--data",
        str(data),
        "--rounds",
        str(rounds),
        "--out",
        str(out),
        *TRAIN,
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads((out / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedvox.synth import generate_federation

    root = tmp_path_factory.mktemp("sites")
    generate_federation(root, 3, seed=1, size=64)
    return root


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("run")
    return out, simulate(out, data, 3)


def test_global_model_improves(first_run: tuple[Path, dict[str, Any]]) -> None:
    _, metrics = first_run
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert sorted(metrics["rounds"][0]["sites"]) == ["site-a", "site-b", "site-c"]
    initial = metrics["initial_test_dice"]["mean"]
    final = metrics["final"]["test_dice"]["mean"]
    assert initial < 0.05, metrics["initial_test_dice"]  # an untrained UNet finds no lesions
    assert final > initial + 0.15, (initial, final)


def test_every_round_is_checkpointed_and_loads(first_run: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = first_run
    checkpoints = out / "state" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"round-{r:06d}" for r in range(4)]
    previous = None
    for r in range(4):
        folder = checkpoints / f"round-{r:06d}"
        meta = json.loads((folder / "round.json").read_text())
        blob = (folder / "global.safetensors").read_bytes()
        assert meta["round"] == r
        assert blake3.blake3(blob).hexdigest() == meta["global_digest"]
        weights = load_file(str(folder / "global.safetensors"))  # the official reader agrees
        assert all(np.isfinite(w).all() for w in weights.values())
        if previous is not None:  # aggregation really moved the weights
            assert any(not np.array_equal(weights[k], previous[k]) for k in weights)
        previous = weights
    final = (out / "global_model.safetensors").read_bytes()
    assert blake3.blake3(final).hexdigest() == metrics["global_model"]["digest"]
    assert final == (checkpoints / "round-000003" / "global.safetensors").read_bytes()


def test_restarted_server_continues_from_next_round(
    first_run: tuple[Path, dict[str, Any]], data: Path
) -> None:
    out, _ = first_run
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedvox.cli",
            "simulate",
            "--data",
            str(data),
            "--rounds",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr  # nothing overwritten
    metrics = simulate(out, data, 4, "--resume")
    # rounds 1-3 come from the checkpointed history; only round 4 was trained now
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]
    history = json.loads((out / "state" / "history.json").read_text())
    kinds = [(h["round"], h["kind"]) for h in history]
    assert kinds.count((0, "init")) == 1 and kinds.count((0, "evaluate")) == 1
    assert kinds.count((4, "train")) == 1 and (4, "evaluate") in kinds
    assert (out / "state" / "checkpoints" / "round-000004" / "global.safetensors").is_file()
