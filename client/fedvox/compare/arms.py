"""Running one arm at one seed, through the real server and client processes, and scoring it.

Arms and their local-step budget (R rounds, S local steps per round, N sites):

- a federated scheme: one N-site federation, R rounds of S steps at every site (N x R x S);
- local-only: N one-site federations (FedAvg over a single site is plain training), run at the
  same time, each R rounds of S steps (N x R x S);
- pooled: one site whose dataset.json lists every site's cases, R rounds of N x S steps
  (N x R x S).

Each arm writes `result.json` atomically when it is scored; a rerun skips arms that have one and
starts an interrupted arm again from scratch (its folder is cleared).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvox.compare.aggregate import LOCAL_ONLY, POOLED_ARM, POOLED_TEST, mean
from fedvox.compare.evaluate import Evaluator, load_weights, task_config
from fedvox.compare.progress import ProgressBar, round_fraction
from fedvox.compare.scenarios import site_cases
from fedvox.sim.federation import GLOBAL_MODEL, Federation, run_federation

RESULT_JSON = "result.json"
BASELINE_STRATEGY = "fedavg"  # one site: the aggregate is the site's own model


@dataclass(frozen=True)
class Settings:
    """What every arm shares: the schedule, the server settings and how processes run."""

    rounds: int
    local_steps: int
    overrides: dict[str, str]  # server settings, less train.local_steps and train.seed
    strategy_params: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scheme -> pairs
    config: Path | None = None
    threads: int = 1  # torch CPU threads of every client process (and of the evaluation)
    insecure: bool = False
    timeout: float = 3600.0

    def overrides_for(self, seed: int, local_steps: int) -> dict[str, str]:
        return {
            **self.overrides,
            "train.local_steps": str(local_steps),
            "train.seed": str(seed),
            "round_timeout_s": self.overrides.get("round_timeout_s", str(self.timeout)),
        }

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": "0"}


def arm_kind(arm: str) -> str:
    return {LOCAL_ONLY: "local-only", POOLED_ARM: "pooled"}.get(arm, "federated")


def load_result(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULT_JSON
    if not path.is_file():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(payload, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# set when the harness is told to stop (SIGTERM): every federation still running raises at its
# next status poll, so run_federation's cleanup stops its server and clients
STOP = threading.Event()


class Stopped(Exception):
    pass


class _Watch:
    """Feeds one federation's progress into the bar."""

    def __init__(self, bar: ProgressBar, part: int) -> None:
        self.bar, self.part = bar, part

    def started(self, address: str, logs: Path) -> None:
        pass

    def status(self, status: dict[str, Any]) -> None:
        if STOP.is_set():
            raise Stopped("fedvox compare was asked to stop")
        self.bar.update(self.part, round_fraction(status))


def run_arm(
    arm: str,
    seed: int,
    folder: Path,
    site_dirs: list[Path],
    pooled_dir: Path,
    settings: Settings,
    evaluator: Evaluator,
    bar: ProgressBar,
) -> dict[str, Any]:
    """Train and score `arm` at `seed` in `folder` (cleared first) and write its result.json."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    n = len(site_dirs)
    kind = arm_kind(arm)
    started = time.monotonic()
    runs: dict[str, tuple[Path, tuple[Path, ...]]]
    if kind == "local-only":
        runs = {d.name: (folder / d.name, (d,)) for d in site_dirs}
        steps = settings.local_steps
        strategy = BASELINE_STRATEGY
    elif kind == "pooled":
        runs = {POOLED_ARM: (folder / "run", (pooled_dir,))}
        steps = n * settings.local_steps
        strategy = BASELINE_STRATEGY
    else:
        runs = {"federation": (folder / "run", tuple(site_dirs))}
        steps = settings.local_steps
        strategy = arm
    params = settings.strategy_params.get(strategy, ()) if kind == "federated" else ()
    overrides = settings.overrides_for(seed, steps)
    feds = {
        label: Federation(
            out=out,
            site_dirs=dirs,
            rounds=settings.rounds,
            strategy=strategy,
            strategy_params=params,
            seed=seed,
            config=settings.config,
            overrides=overrides,
            timeout=settings.timeout,
            insecure=settings.insecure,
            threads=settings.threads,
            env=settings.env(),
        )
        for label, (out, dirs) in runs.items()
    }
    bar.begin(f"{arm} seed {seed}", parts=len(feds))
    documents = _run_all(feds, bar)

    config = task_config(
        settings.config,
        overrides,
        strategy,
        dict(p.split("=", 1) for p in params),
    )
    cases = {d.name: site_cases(d)["test"] for d in site_dirs}
    case_dice: dict[str, list[float | None]] = {}
    models: dict[str, str] = {}
    for site in cases:
        # which federation's model scores this site: its own (local-only) or the arm's one
        label = site if kind == "local-only" else next(iter(feds))
        fed = feds[label]
        weights = load_weights(fed.out / GLOBAL_MODEL)
        models[label] = documents[label]["global_model"]["digest"]
        personal = None
        if config.strategy.get("local_keys"):
            from fedvox.client.site_state import SiteState

            personal = SiteState(fed.out / "site-state" / site).load("personal", settings.rounds)
        case_dice[site] = evaluator.case_dice(config, weights, personal, cases[site])
    dice: dict[str, float | None] = {
        site: mean([v for v in values if v is not None]) for site, values in case_dice.items()
    }
    dice[POOLED_TEST] = mean([v for values in case_dice.values() for v in values if v is not None])

    site_curves: dict[str, list[float | None]] = {}
    for document in documents.values():
        site_curves.update(validation_curves(document, settings.rounds))
    curve = [
        mean([v for c in site_curves.values() if (v := c[i]) is not None])
        for i in range(settings.rounds + 1)
    ]
    result = {
        "arm": arm,
        "kind": kind,
        "seed": seed,
        "dice": dice,
        "case_dice": case_dice,
        "curve": curve,
        "site_curves": site_curves,
        "sampled_sites": {
            label: [entry["sites"] for entry in document["rounds"]]
            for label, document in documents.items()
        },
        "strategy": strategy,
        "strategy_params": list(params),
        "local_steps_per_round": steps,
        "total_local_steps": sum(len(f.site_dirs) for f in feds.values()) * settings.rounds * steps,
        "models": models,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(folder / RESULT_JSON, result)
    return result


def validation_curves(document: dict[str, Any], rounds: int) -> dict[str, list[float | None]]:
    """Per site, the validation Dice of the model each round started from (round 0: the
    initial model) and, at `rounds`, of the final model. A site's personal layers count."""
    by_round = {int(entry["round"]): entry for entry in document["rounds"]}
    sites: list[str] = document["settings"]["sites"]
    final = document.get("final", {}).get("val_dice", {})
    return {
        site: [by_round.get(r + 1, {}).get("global_val_dice", {}).get(site) for r in range(rounds)]
        + [final.get(site)]
        for site in sites
    }


def _run_all(feds: dict[str, Federation], bar: ProgressBar) -> dict[str, dict[str, Any]]:
    """Run the federations at the same time (local-only) or the one alone."""
    if len(feds) == 1:
        label, fed = next(iter(feds.items()))
        return {label: run_federation(fed, _Watch(bar, 0))}
    lock = threading.Lock()
    results: dict[str, dict[str, Any]] = {}

    def one(index: int, label: str, fed: Federation) -> None:
        document = run_federation(fed, _Watch(bar, index))
        with lock:
            results[label] = document

    with ThreadPoolExecutor(max_workers=len(feds)) as pool:
        futures = [pool.submit(one, i, label, fed) for i, (label, fed) in enumerate(feds.items())]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return {label: results[label] for label in feds}
