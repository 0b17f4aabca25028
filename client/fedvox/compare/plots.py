"""PNG plots of a comparison (matplotlib with the Agg backend, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedvox.compare.aggregate import LOCAL_ONLY, POOLED_ARM, POOLED_TEST, mean_curve

CONVERGENCE_PNG = "convergence.png"
SITES_PNG = "sites.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "fedvox"  # no random ids anywhere
    return plt


def _style(arm: str) -> dict[str, Any]:
    if arm == POOLED_ARM:
        return {"color": "black", "linestyle": "--"}
    if arm == LOCAL_ONLY:
        return {"color": "grey", "linestyle": ":"}
    return {}


def convergence(document: dict[str, Any], path: Path) -> Path:
    """Validation Dice against round (the mean over the arm's sites' validation splits), one
    line per arm at the mean across seeds, with a band of ±1 std across seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    colours = plt.get_cmap("tab10")
    index = 0
    for arm in document["arms"]:
        curves = [r["curve"] for r in document["runs"] if r["arm"] == arm]
        stats = mean_curve(curves)
        xs = [i for i, s in enumerate(stats) if s.mean is not None]
        if not xs:
            continue
        ys = [stats[i].mean for i in xs]
        style = _style(arm) or {"color": colours(index % 10)}
        index += 0 if arm in (POOLED_ARM, LOCAL_ONLY) else 1
        ax.plot(xs, ys, label=arm, marker="o", markersize=3, **style)
        lo = [stats[i].mean - (stats[i].std or 0.0) for i in xs]  # type: ignore[operator]
        hi = [stats[i].mean + (stats[i].std or 0.0) for i in xs]  # type: ignore[operator]
        ax.fill_between(xs, lo, hi, alpha=0.15, color=style["color"], linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("validation Dice (mean over sites)")
    seeds = len(document["seeds"])
    ax.set_title(
        f"{document['scenario']['name']}: convergence ({seeds} seed{'s' if seeds != 1 else ''})"
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def site_bars(document: dict[str, Any], path: Path) -> Path:
    """Test Dice per test set (each site, then the pooled test set), one bar per arm, with the
    std across seeds as error bars."""
    plt = _pyplot()
    arms: list[str] = document["arms"]
    tests: list[str] = document["test_sets"]
    fig, ax = plt.subplots(figsize=(max(7.5, 1.1 * len(tests) * len(arms) / 3), 4.5), dpi=110)
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(len(arms), 1)
    index = 0
    for k, arm in enumerate(arms):
        summary = document["summary"][arm]
        means = [summary[t]["mean"] or 0.0 for t in tests]
        errors = [summary[t]["std"] or 0.0 for t in tests]
        if arm == POOLED_ARM:
            colour = "black"
        elif arm == LOCAL_ONLY:
            colour = "grey"
        else:
            colour = colours(index % 10)
            index += 1
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(tests))]
        ax.bar(xs, means, width, yerr=errors, label=arm, color=colour, capsize=2)
    ax.set_xticks(range(len(tests)))
    ax.set_xticklabels(["pooled test" if t == POOLED_TEST else t for t in tests])
    ax.set_ylabel("test Dice")
    ax.set_title(f"{document['scenario']['name']}: test Dice per test set and arm")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="best")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
