"""Across seeds: mean, std, the winner per test set, FL/pooled ratios. Pure functions of the
runs' numbers, so they are tested with hand-computed inputs.

A run is one arm at one seed: ``{"arm": str, "seed": int, "dice": {test_set: float | None}}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

POOLED_TEST = "pooled"  # the union of every site's test cases
LOCAL_ONLY = "local-only"
POOLED_ARM = "pooled"


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation (n - 1); None with fewer than two seeds
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (Bessel's n - 1), as FLamby and most papers report across seeds."""
    if len(values) < 2:
        return None
    m = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def stat(values: Iterable[float | None]) -> Stat:
    """Mean and std of the defined values (None, an undefined Dice, is left out)."""
    kept = [v for v in values if v is not None]
    return Stat(mean(kept), std(kept), len(kept))


def summarise(
    runs: Sequence[dict[str, Any]], arms: Sequence[str], test_sets: Sequence[str]
) -> dict[str, dict[str, Stat]]:
    """summary[arm][test_set]: the arm's Dice on that test set across its seeds."""
    return {
        arm: {
            test: stat(r["dice"].get(test) for r in runs if r["arm"] == arm) for test in test_sets
        }
        for arm in arms
    }


def winner(summary: dict[str, dict[str, Stat]], test_set: str, arms: Sequence[str]) -> str | None:
    """The arm with the highest mean Dice on `test_set` among `arms`; a tie goes to the arm
    listed first. None when no arm has a defined mean."""
    best: str | None = None
    best_mean = -math.inf
    for arm in arms:
        value = summary[arm][test_set].mean
        if value is not None and value > best_mean:
            best, best_mean = arm, value
    return best


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fl_pooled_ratio(
    summary: dict[str, dict[str, Stat]], arm: str, test_set: str = POOLED_TEST
) -> float | None:
    """FLamby's FL/pooled ratio: the arm's mean Dice over the pooled arm's mean Dice on the same
    test set (a ratio of the means across seeds, not a mean of per-seed ratios)."""
    return ratio(summary[arm][test_set].mean, summary[POOLED_ARM][test_set].mean)


def sites_where(
    summary: dict[str, dict[str, Stat]], arm: str, baseline: str, sites: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(sites where `arm`'s mean Dice reaches or beats `baseline`'s, sites where it falls short).
    A site where either mean is undefined, or where the arm's is 0 (nothing found: a tie with a
    baseline that also fails is no success), counts as falling short."""
    reached: list[str] = []
    short: list[str] = []
    for site in sites:
        a, b = summary[arm][site].mean, summary[baseline][site].mean
        ok = a is not None and b is not None and a > 0 and a >= b
        (reached if ok else short).append(site)
    return reached, short


def mean_curve(curves: Sequence[Sequence[float | None]]) -> list[Stat]:
    """Per round, the mean and std across seeds of the arm's validation curve."""
    length = max((len(c) for c in curves), default=0)
    return [stat(c[i] if i < len(c) else None for c in curves) for i in range(length)]
