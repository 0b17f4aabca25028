"""Round overhead against Flower: N sites, the default UNet (19 MB), zero local steps.

Run from the repository root, after installing Flower into its own environment (Flower
1.42 needs protobuf < 7, fedvox's generated code protobuf 7, so they cannot share .venv):

    python3.11 -m venv benchmarks/.venv-flwr
    benchmarks/.venv-flwr/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/flower_overhead.py --sites 10 --rounds 5 --repeats 3

Every repeat runs, one after the other on the same machine (the order rotates from repeat
to repeat), the same federation three ways, each with real processes on loopback, plaintext
for all (no TLS anywhere):

* fedvox: `python -m fedvox.server --insecure` (FedAvg, `train.local_steps=0`,
  `evaluate=false`) and one `python -m fedvox.client --insecure --threads 1` process per
  site. Every site trains zero steps: it long-polls its task, downloads the 19 MB global
  model, builds the UNet, loads the weights, computes its (zero) delta, uploads it; the
  server journals, folds, aggregates and checkpoints (fsync) every round. Each site holds
  one synthetic 32^3 training case and an empty validation split, so no evaluation runs
  (a site with a validation split evaluates the global model before and after training,
  which is model work, not framework work);
* Flower, deployment runtime (the path Flower 1.42 documents): `flower-superlink
  --insecure`, one `flower-supernode --insecure` per site, the Flower App in
  benchmarks/flower_app started with `flwr run`. Its ServerApp runs Flower's FedAvg
  strategy (every node each round, no federated evaluation); its ClientApp returns the
  arrays it received. The arrays are float32 of the default UNet's 97 shapes (19.2 MB);
* Flower, legacy gRPC path: `flwr.server.start_server` and one `flwr.client.start_client`
  process per site (deprecated since Flower 1.13, still shipped; bidirectional gRPC
  streams, no polling), Flower's legacy FedAvg, the same arrays, the same zero-step client.

Round time: fedvox's round k ends when its checkpoint folder `round-k` appears (polled
every 5 ms); Flower's when its `evaluate_fn` hook, which Flower calls after each round's
aggregation, writes a timestamp. Round 1 pays one-off costs (first model build, caches,
installing the Flower App), so the figure is the median of rounds 2..R over all repeats.
CPU: the user+system seconds of every process of the framework (sampled every 0.1 s over
each process tree; processes shorter than that are missed), per steady round.

Target (issue 8): fedvox's round >= 3x faster than Flower's deployment stack. Stdout ends
with exactly one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from fedvox.sim.processes import free_port, spawn, wait_healthy

HERE = Path(__file__).resolve().parent
APP = HERE / "flower_app"
DEFAULT_FLOWER_VENV = HERE / ".venv-flwr"
FRAMEWORKS = ("fedvox", "flower", "flower-legacy")
TARGET_SPEEDUP = 3.0  # fedvox's round >= 3x faster than Flower's deployment stack
Stamps = Callable[[], dict[int, float]]


@dataclass
class Run:
    framework: str
    rounds: int
    round_end: dict[int, float]  # round -> wall time its aggregation finished (0 = start)
    cpu_at: dict[int, float]  # round -> CPU seconds of the framework's processes by then
    processes: int  # peak number of the framework's processes seen
    steady: list[float] = field(default_factory=list)  # seconds of rounds 2..R
    cpu_per_round: float = 0.0

    def __post_init__(self) -> None:
        ends = self.round_end
        self.steady = [ends[k] - ends[k - 1] for k in range(2, self.rounds + 1)]
        self.cpu_per_round = (self.cpu_at[self.rounds] - self.cpu_at[1]) / (self.rounds - 1)

    @property
    def first_round(self) -> float:
        return self.round_end[1] - self.round_end[0]


class Watch:
    """Polls a framework's round stamps; samples its processes' CPU time."""

    def __init__(self, roots: Sequence[psutil.Process], stamps: Stamps) -> None:
        self.roots = list(roots)
        self.stamps = stamps
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> cpu seconds
        self.peak_processes = 0
        self.round_end: dict[int, float] = {}
        self.cpu_at: dict[int, float] = {}

    def add(self, process: psutil.Process) -> None:
        self.roots.append(process)

    def sample_cpu(self) -> float:
        seen = 0
        for root in self.roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    t = p.cpu_times()
                    self.cpu[(p.pid, p.create_time())] = t.user + t.system
                    seen += 1
                except psutil.Error:
                    pass
        self.peak_processes = max(self.peak_processes, seen)
        return sum(self.cpu.values())

    def until(self, last_round: int, timeout_s: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        next_cpu = 0.0
        while last_round not in self.round_end:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"only rounds {sorted(self.round_end)} finished in time")
            if not alive():
                raise RuntimeError("a framework process exited early (see its log)")
            for round_, at in self.stamps().items():
                if round_ not in self.round_end:
                    self.round_end[round_] = at
                    self.cpu_at[round_] = self.sample_cpu()
            if now >= next_cpu:
                self.sample_cpu()
                next_cpu = now + 0.1
            time.sleep(0.005)


def stop_tree(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGTERM the processes this benchmark started and every process they started."""
    tree: list[psutil.Process] = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            tree += [*parent.children(recursive=True), parent]
        except psutil.Error:
            pass
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s)


# ---------------------------------------------------------------- fedvox


def fedvox_sites(root: Path, n_sites: int) -> list[Path]:
    """N synthetic sites of one 32^3 training case each, with no validation or test case."""
    from fedvox.synth import generate_federation

    sites = generate_federation(root, n_sites, size=32, n_train=1, n_val=1, n_test=1)
    for site in sites:
        meta = json.loads((site / "dataset.json").read_text())
        meta["validation"], meta["test"] = [], []
        (site / "dataset.json").write_text(json.dumps(meta, indent=1))
    return sites


def run_fedvox(work: Path, sites: list[Path], rounds: int, timeout_s: float) -> Run:
    state = work / "state"
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)]
    args += ["--rounds", str(rounds), "--min-sites", str(len(sites)), "--insecure"]
    for setting in ("evaluate=false", "train.local_steps=0", "site_timeout_s=600"):
        args += ["--set", setting]
    server = spawn("fedvox.server", args, work / "logs" / "server.log")
    processes = [server]
    try:
        wait_healthy(address, server)
        checkpoints = state / "checkpoints"

        def stamps() -> dict[int, float]:
            try:
                names = os.listdir(checkpoints)
            except OSError:
                return {}
            return {int(n[6:]): time.time() for n in names if n.startswith("round-")}

        watch = Watch([psutil.Process(server.pid)], stamps)
        for site in sites:
            client_args = ["--site-id", site.name, "--server", address, "--data-root", str(site)]
            client_args += ["--insecure", "--threads", "1"]
            client_args += ["--set", f"state_dir={work / 'site-state' / site.name}"]
            client = spawn("fedvox.client", client_args, work / "logs" / f"{site.name}.log")
            processes.append(client)
            watch.add(psutil.Process(client.pid))
        watch.until(rounds, timeout_s, lambda: all(p.poll() is None for p in processes[:1]))
    finally:
        stop_tree(processes)
    return Run("fedvox", rounds, watch.round_end, watch.cpu_at, watch.peak_processes)


# ---------------------------------------------------------------- Flower


def read_stamps(path: Path) -> dict[int, float]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:  # a line being written is skipped until it is whole
            out[int(parts[0])] = float(parts[1])
    return out


def flower_env(venv: Path, home: Path) -> dict[str, str]:
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": str(APP)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


def popen(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)


def run_flower(
    work: Path, n_sites: int, rounds: int, shapes: Path, venv: Path, timeout_s: float
) -> Run:
    """Flower's deployment runtime: SuperLink, N SuperNodes, the App started by `flwr run`."""
    home = work / "flwr-home"
    home.mkdir(parents=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(venv, home)
    bin_ = venv / "bin"
    logs = work / "logs"
    link = popen(
        [
            str(bin_ / "flower-superlink"),
            "--insecure",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        logs / "superlink.log",
        env,
    )
    processes = [link]
    stamps_file = work / "stamps.txt"
    try:
        _wait_port(port, link, 60)
        for i in range(n_sites):
            node_port = free_port()
            command = [str(bin_ / "flower-supernode"), "--insecure", "--superlink"]
            command += [f"127.0.0.1:{port}", "--port", str(node_port)]
            processes.append(popen(command, logs / f"supernode-{i}.log", env))
        watch = Watch([psutil.Process(p.pid) for p in processes], lambda: {})
        config = (
            f"nodes={n_sites} num-rounds={rounds} shapes-file='{shapes}' "
            f"stamps-file='{stamps_file}'"
        )
        started = subprocess.run(
            [str(bin_ / "flwr"), "run", str(APP), "bench", "--run-config", config],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        (logs / "flwr-run.log").write_text(started.stdout + started.stderr)
        if started.returncode != 0:
            raise RuntimeError(f"flwr run failed: {started.stdout}{started.stderr}")
        watch.stamps = lambda: read_stamps(stamps_file)
        watch.until(rounds, timeout_s, lambda: link.poll() is None)
    finally:
        stop_tree(processes)
    return Run("flower", rounds, _rebase(watch.round_end), watch.cpu_at, watch.peak_processes)


def run_flower_legacy(
    work: Path, n_sites: int, rounds: int, shapes: Path, venv: Path, timeout_s: float
) -> Run:
    """Flower's legacy gRPC path: start_server and N start_client processes."""
    env = flower_env(venv, work / "flwr-home")
    python = str(venv / "bin" / "python")
    port = free_port()
    stamps_file = work / "stamps.txt"
    logs = work / "logs"
    server = popen(
        [
            python,
            "-m",
            "fvbench.legacy",
            "server",
            "--port",
            str(port),
            "--nodes",
            str(n_sites),
            "--rounds",
            str(rounds),
            "--shapes",
            str(shapes),
            "--stamps",
            str(stamps_file),
        ],
        logs / "server.log",
        env,
    )
    processes = [server]
    try:
        _wait_port(port, server, 60)
        for i in range(n_sites):
            command = [python, "-m", "fvbench.legacy", "client", "--server", f"127.0.0.1:{port}"]
            processes.append(popen(command, logs / f"client-{i}.log", env))
        watch = Watch([psutil.Process(p.pid) for p in processes], lambda: read_stamps(stamps_file))
        watch.until(rounds, timeout_s, lambda: server.poll() is None or rounds in watch.round_end)
    finally:
        stop_tree(processes)
    return Run(
        "flower-legacy", rounds, _rebase(watch.round_end), watch.cpu_at, watch.peak_processes
    )


def _rebase(ends: dict[int, float]) -> dict[int, float]:
    return dict(sorted(ends.items()))


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} after {timeout_s:.0f}s")


# ---------------------------------------------------------------- main


def unet_shapes(path: Path) -> int:
    """Write the default UNet's (name, shape) list for the Flower side; returns its bytes."""
    import torch

    from fedvox.client.model import build_model
    from fedvox.wire.taskconfig import ModelSpec

    state = build_model(ModelSpec()).state_dict()
    if any(v.dtype != torch.float32 for v in state.values()):
        raise RuntimeError("the default UNet is expected to hold float32 tensors only")
    path.write_text(json.dumps([[k, list(v.shape)] for k, v in state.items()]))
    return sum(int(v.numel()) * 4 for v in state.values())


def flower_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--flower-venv", type=Path, default=DEFAULT_FLOWER_VENV)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--workdir", type=Path, help="logs and state (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is a warm-up)")
    flower = [f for f in args.frameworks if f.startswith("flower")]
    version = ""
    if flower:
        if not (args.flower_venv / "bin" / "flwr").exists():
            parser.error(f"no Flower in {args.flower_venv}: create it as the module docstring says")
        version = flower_version(args.flower_venv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="fedvox-flower-"))
    root.mkdir(parents=True, exist_ok=True)
    shapes = root / "unet_shapes.json"
    model_bytes = unet_shapes(shapes)
    sites = fedvox_sites(root / "data", args.sites) if "fedvox" in args.frameworks else []
    print(
        f"{args.sites} sites, {model_bytes / 1e6:.1f} MB model, {args.rounds} rounds x "
        f"{args.repeats} repeats; Flower {version or '-'}; work in {root}",
        file=sys.stderr,
    )
    runs: dict[str, list[Run]] = {f: [] for f in args.frameworks}
    for r in range(args.repeats):
        order = (
            args.frameworks[r % len(args.frameworks) :]
            + args.frameworks[: r % len(args.frameworks)]
        )
        for framework in order:
            work = root / f"repeat-{r}" / framework
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            if framework == "fedvox":
                run = run_fedvox(work, sites, args.rounds, args.timeout)
            elif framework == "flower":
                run = run_flower(
                    work, args.sites, args.rounds, shapes, args.flower_venv, args.timeout
                )
            else:
                run = run_flower_legacy(
                    work, args.sites, args.rounds, shapes, args.flower_venv, args.timeout
                )
            runs[framework].append(run)
            print(
                f"repeat {r + 1} {framework:>13}: rounds 2..{args.rounds} "
                + " ".join(f"{s:.2f}" for s in run.steady)
                + f" s (round 1 {run.first_round:.2f} s), CPU {run.cpu_per_round:.2f} s/round",
                file=sys.stderr,
            )
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)

    summary: dict[str, Any] = {}
    for framework, items in runs.items():
        steady = [s for run in items for s in run.steady]
        summary[framework] = {
            "round_seconds": round(statistics.median(steady), 4),
            "round_seconds_min": round(min(steady), 4),
            "round_seconds_max": round(max(steady), 4),
            "first_round_seconds": round(statistics.median(r.first_round for r in items), 3),
            "cpu_seconds_per_round": round(statistics.median(r.cpu_per_round for r in items), 3),
            "processes": max(r.processes for r in items),
            "per_repeat_round_seconds": [round(statistics.median(r.steady), 4) for r in items],
        }
    targets: dict[str, Any] = {}
    if "fedvox" in summary:
        for other in flower:
            speedup = summary[other]["round_seconds"] / summary["fedvox"]["round_seconds"]
            summary[other]["fedvox_speedup"] = round(speedup, 2)
            if other == "flower":
                targets["speedup_vs_flower_deployment"] = {
                    "value": round(speedup, 2),
                    "limit": TARGET_SPEEDUP,
                    "met": speedup >= TARGET_SPEEDUP,
                }
    print(
        f"{'framework':>14} {'s/round':>8} {'min':>7} {'max':>7} {'round 1':>8} "
        f"{'CPU s/round':>11} {'speedup':>8}"
    )
    for framework, s in summary.items():
        print(
            f"{framework:>14} {s['round_seconds']:>8.3f} {s['round_seconds_min']:>7.3f} "
            f"{s['round_seconds_max']:>7.3f} {s['first_round_seconds']:>8.2f} "
            f"{s['cpu_seconds_per_round']:>11.2f} {s.get('fedvox_speedup', 1.0):>8.2f}"
        )
    for name, t in targets.items():
        print(f"target {name}: {t['value']} >= {t['limit']}? {'met' if t['met'] else 'MISSED'}")
    result = {
        "benchmark": "flower_overhead",
        "sites": args.sites,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "model_bytes": model_bytes,
        "flower": version,
        "results": summary,
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
        "runs": {f: [asdict(r) for r in items] for f, items in runs.items()},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
