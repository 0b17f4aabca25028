"""Aggregation benchmark: time per client update and peak RSS for N sites, default UNet.

Run from the repository root with the development virtual environment:

    .venv/bin/python benchmarks/aggregation.py --sites 2 10 50 --repeats 3

The model is the default 3D UNet (`fedvox.wire.taskconfig.ModelSpec()`: 4.8M float32
parameters in 97 tensors, 19.2 MB), its shapes taken once from
`fedvox.client.model.build_model`. For every N the benchmark writes N DELTA updates
(different per site, example counts 10 + i) into a round journal with
`fedvox.server.journal.RoundJournal.spill`, exactly as the server spills accepted uploads.
Then each measurement runs in a fresh child process (numpy and fedvox.server only, no
torch), so its peak RSS belongs to that scheme and N alone:

* `fedavg-fresh`: FedAvg's streaming fold as the orchestrator runs it for uploads that
  arrive in site order: each update is mapped from its journal file and its pages read once
  by the finiteness check, as the Submit that received it leaves it (not timed), then
  handed to `FedAvg.accept` (timed);
* `fedavg-spilled`: the same fold for updates that arrived out of order and wait in the
  journal: `FedAvg.accept(entry.load())` over memory maps of the spilled blobs (timed,
  including the map and the header parse), in sorted site order;
* `fedavg-drain`: the same folds back to back, as the orchestrator's `_fold_ready` runs
  them when the site that held them up answers or the round closes: the floors once, then
  all N (timed as a whole; per update = total / N);
* `median`: a batch scheme, `Median.aggregate(SpilledUpdateSet(entries))` with
  byzantine=0 (the coordinate-wise median itself, without the default Krum pre-selection,
  whose cost is Krum's), which reads every spilled blob one tensor of all sites at a time
  (timed as a whole; per update = total / N);
* `median-krum`: the same with the default byzantine=1, which first scores every update
  by Krum (pairwise distances, O(N^2) in the model's size) and sets the worst one aside;
  the pre-selection needs N > 4, so at N = 2 it is the plain median.

Each child runs --rounds rounds (default 3) back to back, as a server does, and times every
update of every round. Before each timed update (before each round's batch for
`fedavg-drain` and the medians) it times two floors in the same process:
the memory-bandwidth floor `a += b` on contiguous 19.2 MB float32 arrays (one numpy call;
`b` cycles through a ring of three, larger than the L3 cache, so that it comes from memory
as an update does), and the weighted floor `a += w * b` in the fastest numpy form without a
model-sized temporary (blocks through an L2-sized scratch buffer). Ratios fold / floor are
taken per update, so noise on a shared machine hits both alike. `finish()` (the mean and
the new global model, once per round) is timed separately.

Peak RSS: each child samples its own RSS (and anonymous memory, RSS minus file-backed
shared pages) with psutil every --sample-ms in a thread, from just before the first
update until the last round's result exists; growth = peak - RSS just before. Figures are
medians over every timed update (or round) of every repeat; stdout ends with exactly one
JSON line holding them all.

Targets (issue 8): FedAvg <= 1.5 ms per 19 MB update, and RSS independent of N for the
FedAvg family (checked as: peak growth at the largest N <= peak growth at the smallest N
plus 0.25 x the model size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]

from fedvox.server.journal import RoundJournal, SpilledUpdate, SpilledUpdateSet
from fedvox.server.strategies import RoundContext, Update
from fedvox.server.strategies.fedavg import FedAvg
from fedvox.server.strategies.robust import Median
from fedvox.wire.digest import digest_hex
from fedvox.wire.tensors import StateDict, check_finite, parse_safetensors, to_safetensors

MB = 1_000_000
SCHEMES = ("fedavg-fresh", "fedavg-spilled", "fedavg-drain", "median", "median-krum")
TARGET_MS = 1.5  # FedAvg per 19 MB update
TARGET_RSS_SLACK_X = 0.25  # RSS "independent of N": growth(N max) <= growth(N min) + 0.25 x model
GLOBAL = "global.safetensors"
RING = 3  # floor inputs: 3 x 19 MB > the 32 MB L3 of the machine measured here
BLOCK = 1 << 17  # elements per block of the weighted floor
Shapes = list[tuple[str, tuple[int, ...]]]


# ---------------------------------------------------------------- parent: data


def unet_shapes() -> Shapes:
    """The default UNet's tensor names and shapes (torch is imported here only)."""
    import torch

    from fedvox.client.model import build_model
    from fedvox.wire.taskconfig import ModelSpec

    state = build_model(ModelSpec()).state_dict()
    if any(v.dtype != torch.float32 for v in state.values()):
        raise RuntimeError("the default UNet is expected to hold float32 tensors only")
    return [(k, tuple(int(d) for d in v.shape)) for k, v in state.items()]


def write_round(root: Path, shapes: Shapes, n_sites: int) -> None:
    """The global model and N spilled DELTA updates under root (a journal of one round)."""
    rng = np.random.default_rng(n_sites)
    base = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.05) for k, s in shapes}
    (root / GLOBAL).write_bytes(to_safetensors(base))
    journal = RoundJournal.create(root / "journal", 1, {"kind": "train", "round": 1, "tasks": []})
    noise = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for k, s in shapes}
    for i in range(n_sites):
        scale = np.float32(1.0 + i / max(n_sites, 1))
        delta = {k: v * scale - np.float32(1e-4 * i) for k, v in noise.items()}
        blob = to_safetensors(delta)
        journal.spill(
            f"site-{i:03d}", f"task-{i:03d}", blob, digest_hex(blob), 10 + i, 1, {"loss": 0.5}
        )


# ---------------------------------------------------------------- child: one measurement


class Sampler:
    """Peak RSS and anonymous RSS of this process, sampled in a thread."""

    def __init__(self, interval_s: float) -> None:
        self.process = psutil.Process()
        self.interval_s = interval_s
        self.rss0, self.anon0 = self.read()
        self.peak_rss, self.peak_anon = self.rss0, self.anon0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> tuple[int, int]:
        info = self.process.memory_info()
        return int(info.rss), int(info.rss - info.shared)

    def _sample(self) -> None:
        rss, anon = self.read()
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _received(entry: SpilledUpdate) -> Update:
    """The update as a fresh Submit holds it: read-only views of the journal file it was just
    written to, every page already read once by the finiteness check."""
    update = entry.load()
    check_finite(update.tensors)
    return update


def child(scheme: str, root: Path, sample_ms: float, rounds: int) -> dict[str, Any]:
    global_weights: StateDict = parse_safetensors(bytearray((root / GLOBAL).read_bytes()))
    (journal,) = RoundJournal.recover(root / "journal")
    entries = [journal.entries[s] for s in sorted(journal.entries)]
    n = len(entries)
    size = entries[0].path.stat().st_size
    elements = sum(int(v.size) for v in global_weights.values())
    # the floors' arrays are resident before the RSS baseline; `b` cycles through a ring
    # larger than the L3 cache, so that, like an update, it is read from memory
    floor_a = np.full(elements, 1.0, dtype=np.float32)
    ring = [np.full(elements, 1e-6, dtype=np.float32) for _ in range(RING)]
    scratch = np.empty(BLOCK, dtype=np.float32)
    context = RoundContext(1, tuple(e.site_id for e in entries), n)
    fold_ms: list[list[float]] = []  # per round, per update
    floor_ms: list[list[float]] = []
    weighted_ms: list[list[float]] = []

    calls = [0]

    def floor() -> None:
        calls[0] += 1
        b = ring[calls[0] % RING]
        start = time.perf_counter()
        np.add(floor_a, b, out=floor_a)
        floor_ms[-1].append(_ms(start))
        b = ring[(calls[0] + 1) % RING]
        w = np.float32(0.5)
        start = time.perf_counter()
        for i in range(0, elements, BLOCK):  # a += w * b, the best numpy does without a temporary
            part, scaled = floor_a[i : i + BLOCK], scratch[: min(BLOCK, elements - i)]
            np.multiply(b[i : i + BLOCK], w, out=scaled)
            np.add(part, scaled, out=part)
        weighted_ms[-1].append(_ms(start))

    floor_ms.append([])
    weighted_ms.append([])
    for _ in range(RING):  # warm the floors' pages
        floor()
    floor_ms.clear()
    weighted_ms.clear()
    sampler = Sampler(sample_ms / 1e3)
    total_ms: list[float] = []
    finish_ms: list[float] = []
    for _ in range(rounds):  # a server runs round after round: every round is timed
        fold_ms.append([])
        floor_ms.append([])
        weighted_ms.append([])
        total_start = time.perf_counter()
        if scheme.startswith("median"):
            median = Median(Median.Params(byzantine=1 if scheme == "median-krum" else 0))
            median.begin(global_weights, context)
            floor()
            start = time.perf_counter()
            result = median.aggregate(SpilledUpdateSet(entries))
            fold_ms[-1].append(_ms(start) / n)
        elif scheme == "fedavg-drain":
            fedavg = FedAvg()
            fedavg.begin(global_weights, context)
            floor()
            start = time.perf_counter()
            for entry in entries:  # back to back, as the orchestrator's _fold_ready runs them
                fedavg.accept(entry.load())
            fold_ms[-1].append(_ms(start) / n)
            start = time.perf_counter()
            result = fedavg.finish()
            finish_ms.append(_ms(start))
        else:
            fedavg = FedAvg()
            fedavg.begin(global_weights, context)
            for entry in entries:
                if scheme == "fedavg-fresh":
                    update = _received(entry)  # the upload's own work: not aggregation's time
                    floor()
                    start = time.perf_counter()
                    fedavg.accept(update)
                    fold_ms[-1].append(_ms(start))
                    del update  # the Submit ends: its buffer goes, unless it became the sum
                else:
                    floor()
                    start = time.perf_counter()
                    fedavg.accept(entry.load())
                    fold_ms[-1].append(_ms(start))
            start = time.perf_counter()
            result = fedavg.finish()
            finish_ms.append(_ms(start))
        total_ms.append(_ms(total_start))
        del result
    sampler.stop()
    return {
        "scheme": scheme,
        "sites": n,
        "payload_bytes": size,
        "fold_ms": fold_ms,
        "floor_ms": floor_ms,
        "weighted_floor_ms": weighted_ms,
        "finish_ms": finish_ms,
        "total_ms": total_ms,
        "rss_before": sampler.rss0,
        "rss_peak": sampler.peak_rss,
        "anon_before": sampler.anon0,
        "anon_peak": sampler.peak_anon,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_child(scheme: str, root: Path, sample_ms: float, rounds: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", scheme, "--root", str(root)]
    command += ["--sample-ms", str(sample_ms), "--rounds", str(rounds)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- parent: figures


@dataclass
class Cell:
    """Every run of one (scheme, N)."""

    scheme: str
    sites: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    def _pooled(self, key: str) -> list[float]:
        """Every timed update of every round of every repeat (for FedAvg the first update
        of each round is left out when there are others: it only scales the buffer that
        becomes the sum)."""
        return [v for r in self.runs for round_ in r[key] for v in self._steady(round_)]

    def _steady(self, values: Sequence[Any]) -> Sequence[Any]:
        return values[1:] if self.scheme.startswith("fedavg") and len(values) > 1 else values

    def ms(self, key: str = "fold_ms") -> float:
        """Median per-update time (or floor time) over all repeats."""
        return float(statistics.median(self._pooled(key)))

    def ratio(self, floor: str) -> float:
        """Median over the timed updates of fold time / the floor timed just before it."""
        pairs = zip(self._pooled("fold_ms"), self._pooled(floor), strict=True)
        return float(statistics.median(f / b for f, b in pairs))

    def median(self, key: str) -> float:
        """Median over the repeats (and, for a per-round figure, over every round)."""
        values = [v for r in self.runs for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        return float(statistics.median(values or [0.0]))

    def growth(self, kind: str) -> float:
        return float(statistics.median(r[f"{kind}_peak"] - r[f"{kind}_before"] for r in self.runs))

    def summary(self) -> dict[str, Any]:
        n = self.sites
        return {
            "scheme": self.scheme,
            "sites": n,
            "per_update_ms": round(self.ms(), 4),
            "floor_ms": round(self.ms("floor_ms"), 4),
            "weighted_floor_ms": round(self.ms("weighted_floor_ms"), 4),
            "ratio_vs_floor": round(self.ratio("floor_ms"), 3),
            "ratio_vs_weighted_floor": round(self.ratio("weighted_floor_ms"), 3),
            "finish_ms": round(self.median("finish_ms"), 3),
            "round_total_ms": round(self.median("total_ms"), 3),
            "amortised_ms_per_update": round(self.median("total_ms") / n, 4),
            "rss_growth_bytes": int(self.growth("rss")),
            "anon_growth_bytes": int(self.growth("anon")),
            "rss_peak_bytes": int(self.median("rss_peak")),
            "per_update_ms_runs": [
                round(statistics.median(v for rd in r["fold_ms"] for v in self._steady(rd)), 4)
                for r in self.runs
            ],
        }


def _server_malloc() -> None:
    """Aggregation runs in the server process: time it under the server's malloc and BLAS
    settings."""
    try:
        from fedvox.server.memory import tune_malloc
    except ImportError:  # an older fedvox, measured for a before/after figure
        return
    tune_malloc()
    try:
        from fedvox.server.blas import limit_blas_threads
    except ImportError:
        return
    limit_blas_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per child process")
    parser.add_argument("--sample-ms", type=float, default=1.0, help="RSS sampling interval")
    parser.add_argument("--workdir", type=Path, help="where the journals go (default: temp)")
    parser.add_argument("--child", choices=SCHEMES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if not os.environ.get("FEDVOX_BENCH_NO_TUNE"):
            _server_malloc()
        print(json.dumps(child(args.child, args.root, args.sample_ms, args.rounds)))
        return 0

    shapes = unet_shapes()
    elements = sum(int(np.prod(s)) for _, s in shapes)
    model_bytes = elements * 4
    print(
        f"default UNet: {elements:,} float32 in {len(shapes)} tensors ({model_bytes / MB:.1f} MB)"
        f"; sites {args.sites}; {args.repeats} repeats",
        file=sys.stderr,
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedvox-aggregation-"))
    roots: dict[int, Path] = {}
    cells = {(s, n): Cell(s, n) for n in args.sites for s in args.schemes}
    try:
        for n in args.sites:
            roots[n] = workdir / f"sites-{n}"
            shutil.rmtree(roots[n], ignore_errors=True)
            roots[n].mkdir(parents=True)
            write_round(roots[n], shapes, n)
        for r in range(args.repeats):
            for n in args.sites:  # interleaved: every repeat runs every cell once
                for scheme in args.schemes:
                    run = run_child(scheme, roots[n], args.sample_ms, args.rounds)
                    cells[(scheme, n)].runs.append(run)
                    print(
                        f"repeat {r + 1} {scheme:>15} N={n:<3} per update "
                        f"{cells[(scheme, n)].summary()['per_update_ms_runs'][-1]:8.3f} ms, RSS +"
                        f"{(run['rss_peak'] - run['rss_before']) / MB:.1f} MB",
                        file=sys.stderr,
                    )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    summaries = [cells[(s, n)].summary() for s in args.schemes for n in args.sites]
    targets: dict[str, Any] = {}
    fedavg = [s for s in args.schemes if s.startswith("fedavg")]
    for scheme in fedavg:
        worst = max(cells[(scheme, n)].ms() for n in args.sites)
        targets[f"{scheme}_ms_per_update"] = {
            "value": round(worst, 4),
            "limit": TARGET_MS,
            "met": worst <= TARGET_MS,
            "floor_ms": round(max(cells[(scheme, n)].ms("floor_ms") for n in args.sites), 4),
        }
        low, high = min(args.sites), max(args.sites)
        for kind in ("rss", "anon"):
            extra = cells[(scheme, high)].growth(kind) - cells[(scheme, low)].growth(kind)
            targets[f"{scheme}_{kind}_independent_of_n"] = {
                "value_bytes": int(extra),
                "limit_bytes": int(TARGET_RSS_SLACK_X * model_bytes),
                "met": extra <= TARGET_RSS_SLACK_X * model_bytes,
            }

    header = (
        f"{'scheme':>15} {'N':>3} {'ms/update':>10} {'floor ms':>9} {'x floor':>8} "
        f"{'w.floor ms':>10} {'x w.floor':>9} {'finish ms':>10} {'RSS +MB':>8} {'anon +MB':>9} "
        f"{'x model':>8}"
    )
    print(header)
    for s in summaries:
        print(
            f"{s['scheme']:>15} {s['sites']:>3} {s['per_update_ms']:>10.3f} "
            f"{s['floor_ms']:>9.3f} {s['ratio_vs_floor']:>8.2f} {s['weighted_floor_ms']:>10.3f} "
            f"{s['ratio_vs_weighted_floor']:>9.2f} {s['finish_ms']:>10.2f} "
            f"{s['rss_growth_bytes'] / MB:>8.1f} {s['anon_growth_bytes'] / MB:>9.1f} "
            f"{s['rss_growth_bytes'] / model_bytes:>8.2f}"
        )
    for name, t in targets.items():
        value = t.get("value", t.get("value_bytes"))
        limit = t.get("limit", t.get("limit_bytes"))
        print(f"target {name}: {value} (limit {limit}) {'met' if t['met'] else 'MISSED'}")
    result = {
        "benchmark": "aggregation",
        "model_bytes": model_bytes,
        "payload_bytes": cells[(args.schemes[0], args.sites[0])].runs[0]["payload_bytes"],
        "parameters": elements,
        "tensors": len(shapes),
        "sites": args.sites,
        "repeats": args.repeats,
        "rounds_per_child": args.rounds,
        "results": summaries,
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
