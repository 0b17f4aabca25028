"""What `fedvox compare` writes under --out: results.json, results.csv, report.md, manifest.json
(plots: :mod:`fedvox.compare.plots`).

results.json holds only what the seeds determine (no timings, no paths), so the same seeds
and configuration reproduce it byte for byte; timings and paths go to manifest.json.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedvox.compare.aggregate import (
    LOCAL_ONLY,
    POOLED_ARM,
    POOLED_TEST,
    Stat,
    fl_pooled_ratio,
    ratio,
    sites_where,
    summarise,
    winner,
)

FLAMBY_RANGE = (0.79, 0.86)  # FLamby's best FL/pooled ratios on its 3D segmentation tasks
TIMING_KEYS = ("wall_seconds",)


def results_document(
    scenario: dict[str, Any],
    sites: list[str],
    arms: list[str],
    seeds: list[int],
    config: dict[str, Any],
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    test_sets = [*sites, POOLED_TEST]
    runs = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in runs]
    summary = summarise(runs, arms, test_sets)
    federated = [a for a in arms if a not in (LOCAL_ONLY, POOLED_ARM)]
    return {
        "scenario": scenario,
        "sites": sites,
        "test_sets": test_sets,
        "arms": arms,
        "seeds": seeds,
        "config": config,
        "runs": runs,
        "summary": {a: {t: s.to_json() for t, s in by.items()} for a, by in summary.items()},
        "winner": {t: winner(summary, t, arms) for t in test_sets},
        "best_federated": {t: winner(summary, t, federated) for t in test_sets},
        "fl_pooled_ratio": {
            a: fl_pooled_ratio(summary, a) for a in arms if POOLED_ARM in arms and a != POOLED_ARM
        },
    }


def results_csv(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scenario", "arm", "kind", "seed", "test_set", "dice", "lesion_cases"])
    for run in document["runs"]:
        for test in document["test_sets"]:
            value = run["dice"].get(test)
            if test == POOLED_TEST:
                scored = [v for vs in run["case_dice"].values() for v in vs if v is not None]
            else:
                scored = [v for v in run["case_dice"].get(test, []) if v is not None]
            writer.writerow(
                [
                    document["scenario"]["name"],
                    run["arm"],
                    run["kind"],
                    run["seed"],
                    test,
                    "" if value is None else repr(float(value)),
                    len(scored),
                ]
            )
    return buffer.getvalue()


def _stats(document: dict[str, Any]) -> dict[str, dict[str, Stat]]:
    return {
        arm: {t: Stat(s["mean"], s["std"], s["n"]) for t, s in by.items()}
        for arm, by in document["summary"].items()
    }


def _cell(s: Stat, bold: bool = False) -> str:
    if s.mean is None:
        return "n/a"
    text = f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if s.std is not None else "")
    return f"**{text}**" if bold else text


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report_markdown(document: dict[str, Any], plots: Sequence[str]) -> str:
    stats = _stats(document)
    arms: list[str] = document["arms"]
    sites: list[str] = document["sites"]
    tests: list[str] = document["test_sets"]
    config = document["config"]
    scenario = document["scenario"]
    seeds = document["seeds"]
    federated = [a for a in arms if a not in (LOCAL_ONLY, POOLED_ARM)]
    lines = [
        f"# fedvox compare: {scenario['name']}",
        "",
        f"{scenario['description']}. {len(sites)} sites ({', '.join(sites)}; training cases "
        f"{', '.join(str(n) for n in config['training_cases'])}), {config['rounds']} rounds x "
        f"{config['local_steps']} local steps, seeds {', '.join(str(s) for s in seeds)}. Every arm "
        f"trains {config['total_local_steps']} local steps in all: federated arms and local-only "
        f"{config['local_steps']} per site per round, pooled {len(sites)} x "
        f"{config['local_steps']} per round on the union of the sites' training cases.",
        "",
        f"## Test Dice (mean ± std across {len(seeds)} seed{'s' if len(seeds) != 1 else ''})",
        "",
        "Each site's test split, and the pooled test set (every site's test cases together, "
        "Dice averaged over its lesion cases). FedBN, FedPer and local-only score each site's "
        "cases with that site's own model (its personal layers, or its own local model), also "
        "within the pooled test set. Bold: the best arm per column.",
        "",
        "| arm | " + " | ".join(t if t != POOLED_TEST else "pooled test" for t in tests) + " |",
        "|---|" + "---|" * len(tests),
    ]
    for arm in arms:
        cells = [_cell(stats[arm][t], document["winner"].get(t) == arm) for t in tests]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Winner per test set",
        "",
        "| test set | best arm | best federated scheme | vs local-only | vs pooled |",
        "|---|---|---|---|---|",
    ]
    for test in tests:
        best = document["best_federated"].get(test)
        local = stats[LOCAL_ONLY][test].mean if LOCAL_ONLY in stats else None
        pooled = stats[POOLED_ARM][test].mean if POOLED_ARM in stats else None
        best_mean = stats[best][test].mean if best else None
        lines.append(
            f"| {test} | {document['winner'].get(test) or 'n/a'} | {best or 'n/a'} | "
            f"{_signed(best_mean, local)} | {_signed(best_mean, pooled)} |"
        )
    if POOLED_ARM in arms:
        low, high = FLAMBY_RANGE
        lines += [
            "",
            "## FL/pooled ratio",
            "",
            "As FLamby reports it: a scheme's mean Dice over the pooled arm's mean Dice on the "
            f"pooled test set (ratio of the means across seeds). FLamby's best strategies reach "
            f"{low:.2f}-{high:.2f} on its 3D tasks. `per-site min`: the lowest of the per-site "
            "ratios (the scheme's Dice on a site's test over the pooled arm's on it).",
            "",
            "| arm | FL/pooled | per-site min | reaches pooled at | beats local-only at |",
            "|---|---|---|---|---|",
        ]
        for arm in [*federated, *([LOCAL_ONLY] if LOCAL_ONLY in arms else [])]:
            per_site = [ratio(stats[arm][s].mean, stats[POOLED_ARM][s].mean) for s in sites]
            defined = [r for r in per_site if r is not None]
            reached, _ = sites_where(stats, arm, POOLED_ARM, sites)
            if LOCAL_ONLY in arms and arm != LOCAL_ONLY:
                beats = [
                    s
                    for s in sites
                    if (a := stats[arm][s].mean) is not None
                    and (b := stats[LOCAL_ONLY][s].mean) is not None
                    and a > b
                ]
                beats_text = _count(beats, sites)
            else:
                beats_text = "-"
            lines.append(
                f"| {arm} | {_ratio(document['fl_pooled_ratio'].get(arm))} | "
                f"{_ratio(min(defined) if defined else None)} | "
                f"{_count(reached, sites)} | {beats_text} |"
            )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines).rstrip() + "\n"


def _count(chosen: list[str], sites: list[str]) -> str:
    return f"{len(chosen)}/{len(sites)}" + (f" ({', '.join(chosen)})" if chosen else "")


def _signed(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return "n/a"
    return f"{value - reference:+.3f}"


def code_version() -> dict[str, Any]:
    """git describe and commit of the checkout fedvox runs from, when it is one."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # uncommitted or untracked source files count: they are part of what ran
    status = git("status", "--porcelain", "--", "proto", "server", "client")
    return {
        "describe": git("describe", "--always", "--dirty", "--tags"),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def versions() -> dict[str, str]:
    """Versions of what computes the numbers (read from the installed metadata: no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "monai", "numpy", "fedvox-client", "fedvox-server", "fedvox-proto"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"
