"""`fedvox compare`'s argument checks, per-scheme parameters and curves from metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from fedvox.compare import cli
from fedvox.compare.arms import Settings, arm_kind, validation_curves


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["--out", "unused", *argv])


def test_strategies_and_parameters_are_checked() -> None:
    strategies, overrides = cli._check(
        parse("--scenario", "iid", "--strategies", "fedavg,fedprox", "--set", "train.lr=0.005")
    )
    assert strategies == ["fedavg", "fedprox"]
    assert overrides["train.lr"] == "0.005"
    assert "train.local_steps" not in overrides  # compare sets it per arm
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        cli._check(parse("--scenario", "iid", "--strategies", "fedavg,nope"))
    with pytest.raises(ValueError, match="--local-steps"):
        cli._check(parse("--scenario", "iid", "--set", "train.local_steps=3"))
    with pytest.raises(ValueError, match="--scenario"):
        cli._check(parse())
    with pytest.raises(ValueError, match="SCHEME:NAME=VALUE"):
        cli._check(parse("--scenario", "iid", "--strategy-param", "mu=0.1"))
    with pytest.raises(ValueError, match="not in --strategies"):
        cli._check(parse("--scenario", "iid", "--strategy-param", "fedprox:mu=0.1"))
    with pytest.raises(Exception, match="no parameter"):
        cli._check(
            parse(
                "--scenario",
                "iid",
                "--strategies",
                "fedprox",
                "--strategy-param",
                "fedprox:rho=1",
            )
        )
    pairs = cli._strategy_params(["fedprox:mu=0.1", "fedadam:lr=0.05"], ["fedprox", "fedadam"])
    assert pairs == {"fedadam": ("lr=0.05",), "fedprox": ("mu=0.1",)}


def test_every_arm_gets_the_same_budget_and_the_seed() -> None:
    settings = Settings(rounds=4, local_steps=10, overrides={"train.lr": "0.01"}, threads=1)
    assert settings.overrides_for(3, 30) == {
        "train.lr": "0.01",
        "train.local_steps": "30",
        "train.seed": "3",
        "round_timeout_s": "3600.0",
    }
    assert settings.env()["OMP_NUM_THREADS"] == "1"
    assert [arm_kind(a) for a in ("fedbn", "local-only", "pooled")] == [
        "federated",
        "local-only",
        "pooled",
    ]


def test_validation_curve_from_metrics() -> None:
    document: dict[str, Any] = {
        "settings": {"sites": ["site-a", "site-b"]},
        "rounds": [
            {"round": 1, "global_val_dice": {"site-a": 0.0, "site-b": 0.1, "mean": 0.05}},
            {"round": 2, "global_val_dice": {"site-a": 0.3}},  # site-b not sampled
        ],
        "final": {"val_dice": {"site-a": 0.5, "site-b": 0.6}},
    }
    assert validation_curves(document, 2) == {
        "site-a": [0.0, 0.3, 0.5],
        "site-b": [0.1, None, 0.6],
    }


def test_a_rerun_with_another_configuration_is_refused(tmp_path: Path) -> None:
    cli._check_same_run(tmp_path, {"rounds": 2, "local_steps": 3})
    cli._check_same_run(tmp_path, {"rounds": 2, "local_steps": 3})  # same: fine
    with pytest.raises(ValueError, match="local_steps"):
        cli._check_same_run(tmp_path, {"rounds": 2, "local_steps": 4})
