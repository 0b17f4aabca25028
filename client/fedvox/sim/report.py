"""Turning the server's round history into the live table and metrics.json."""

from __future__ import annotations

from typing import Any


def _by_site(metrics: dict[str, float], name: str) -> dict[str, float]:
    suffix = "/" + name
    return {
        k[: -len(suffix)]: v
        for k, v in metrics.items()
        if k.endswith(suffix) and not k.startswith("mean/")
    }


def _with_mean(values: dict[str, float]) -> dict[str, float]:
    return {**values, "mean": sum(values.values()) / len(values)} if values else {}


def metrics_document(history: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: per-round validation Dice by site and mean, and test Dice before/after."""
    rounds = []
    initial: dict[str, float] = {}
    final: dict[str, Any] = {}
    for entry in history:
        entry = {**entry, "round": int(entry["round"])}  # proto JSON spells int64 as a string
        metrics = entry.get("metrics", {})
        if entry["kind"] == "train":
            rounds.append(
                {
                    "round": entry["round"],
                    "sites": entry.get("sites", []),
                    "val_dice": _with_mean(_by_site(metrics, "val_dice")),
                    "global_val_dice": _with_mean(_by_site(metrics, "global_val_dice")),
                    "train_loss": _with_mean(_by_site(metrics, "train_loss")),
                    "duration_seconds": entry.get("duration_seconds", 0.0),
                }
            )
        elif entry["kind"] == "evaluate" and entry["round"] == 0:
            initial = _with_mean(_by_site(metrics, "test_dice"))
        elif entry["kind"] == "evaluate":
            final = {
                "test_dice": _with_mean(_by_site(metrics, "test_dice")),
                "val_dice": _with_mean(_by_site(metrics, "val_dice")),
            }
    return {"settings": settings, "rounds": rounds, "initial_test_dice": initial, "final": final}


def format_row(entry: dict[str, Any], sites: list[str]) -> str:
    metrics = entry.get("metrics", {})
    key = {"train": "val_dice", "evaluate": "test_dice"}.get(entry["kind"], "")
    values = _by_site(metrics, key) if key else {}
    cells = "".join(f"{values[s]:>9.3f}" if s in values else f"{'-':>9}" for s in sites)
    mean = f"{metrics['mean/' + key]:>9.3f}" if key and f"mean/{key}" in metrics else f"{'-':>9}"
    label = f"{entry['kind']}"
    if key:
        label += f" ({key})"
    return f"{entry['round']:>5}  {label:<22}{cells}{mean}{entry.get('duration_seconds', 0):>8.1f}s"


def format_header(sites: list[str]) -> str:
    return (
        f"{'round':>5}  {'phase (metric)':<22}{''.join(f'{s:>9}' for s in sites)}"
        f"{'mean':>9}{'time':>9}"
    )
