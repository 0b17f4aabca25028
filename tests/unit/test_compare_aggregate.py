"""`fedvox compare`'s aggregation across seeds, on hand-computed numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedvox.compare.aggregate import (
    Stat,
    fl_pooled_ratio,
    mean,
    mean_curve,
    ratio,
    sites_where,
    stat,
    std,
    summarise,
    winner,
)


def run(arm: str, seed: int, **dice: float | None) -> dict[str, Any]:
    return {"arm": arm, "seed": seed, "dice": dice}


def test_mean_and_sample_std_by_hand() -> None:
    assert mean([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    # deviations -0.2, 0, 0.2: squares sum 0.08, over n - 1 = 2 -> 0.04, root 0.2
    assert std([0.5, 0.7, 0.9]) == pytest.approx(0.2)
    assert std([0.4, 0.6]) == pytest.approx(math.sqrt(0.02))  # 0.01 + 0.01 over 1
    assert mean([]) is None
    assert std([0.3]) is None  # one seed has no spread
    assert std([]) is None


def test_stat_leaves_out_undefined_dice() -> None:
    s = stat([0.2, None, 0.4])
    assert s.mean == pytest.approx(0.3) and s.std == pytest.approx(math.sqrt(0.02)) and s.n == 2
    assert stat([None, None]) == Stat(None, None, 0)


def test_summary_winner_and_ratio() -> None:
    runs = [
        run("fedavg", 0, a=0.6, b=0.2, pooled=0.4),
        run("fedavg", 1, a=0.8, b=0.4, pooled=0.6),
        run("fedbn", 0, a=0.5, b=0.5, pooled=0.5),
        run("fedbn", 1, a=0.7, b=0.5, pooled=0.6),
        run("local-only", 0, a=0.7, b=0.1, pooled=0.3),
        run("local-only", 1, a=0.7, b=0.3, pooled=0.5),
        run("pooled", 0, a=0.9, b=0.5, pooled=0.7),
        run("pooled", 1, a=0.7, b=0.5, pooled=0.7),
    ]
    arms = ["fedavg", "fedbn", "local-only", "pooled"]
    summary = summarise(runs, arms, ["a", "b", "pooled"])
    assert summary["fedavg"]["a"].mean == pytest.approx(0.7)
    assert summary["fedavg"]["a"].std == pytest.approx(math.sqrt(0.02))
    b = summary["fedbn"]["b"]
    assert b.mean == pytest.approx(0.5) and b.std == pytest.approx(0.0) and b.n == 2
    assert summary["fedbn"]["pooled"].mean == pytest.approx(0.55)
    # site a: fedavg 0.7, fedbn 0.6, local-only 0.7, pooled 0.8
    assert winner(summary, "a", arms) == "pooled"
    # among the federated schemes, fedavg's 0.7 beats fedbn's 0.6
    assert winner(summary, "a", ["fedavg", "fedbn"]) == "fedavg"
    # site b: fedbn 0.5 ties pooled 0.5: the arm listed first wins the tie
    assert winner(summary, "b", arms) == "fedbn"
    assert winner(summary, "b", ["pooled", "fedbn"]) == "pooled"
    # FL/pooled on the pooled test set: fedbn 0.55 / pooled 0.7, fedavg 0.5 / 0.7
    assert fl_pooled_ratio(summary, "fedbn") == pytest.approx(0.55 / 0.7)
    assert fl_pooled_ratio(summary, "fedavg") == pytest.approx(0.5 / 0.7)
    assert fl_pooled_ratio(summary, "fedavg", "a") == pytest.approx(0.7 / 0.8)
    # fedbn reaches pooled at b (0.5 >= 0.5), not at a (0.6 < 0.8)
    assert sites_where(summary, "fedbn", "pooled", ["a", "b"]) == (["b"], ["a"])
    # fedavg vs local-only: a 0.7 >= 0.7, b 0.3 >= 0.2
    assert sites_where(summary, "fedavg", "local-only", ["a", "b"]) == (["a", "b"], [])
    # nothing found ties a baseline that finds nothing too: not a success
    zeros = summarise([run("x", 0, a=0.0), run("pooled", 0, a=0.0)], ["x", "pooled"], ["a"])
    assert sites_where(zeros, "x", "pooled", ["a"]) == ([], ["a"])


def test_winner_and_ratio_without_numbers() -> None:
    summary = summarise([run("x", 0, a=None)], ["x", "pooled"], ["a", "pooled"])
    assert winner(summary, "a", ["x", "pooled"]) is None
    assert fl_pooled_ratio(summary, "x") is None
    assert ratio(0.5, 0.0) is None
    assert ratio(0.5, None) is None
    assert ratio(0.3, 0.6) == pytest.approx(0.5)


def test_mean_curve_per_round() -> None:
    curves: list[list[float | None]] = [[0.0, 0.2, 0.4], [0.0, 0.4, None]]
    stats = mean_curve(curves)
    assert [s.mean for s in stats] == [0.0, pytest.approx(0.3), pytest.approx(0.4)]
    assert stats[1].std == pytest.approx(math.sqrt(0.02))
    assert stats[2].n == 1 and stats[2].std is None
