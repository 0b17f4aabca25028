"""`fedvox simulate --sites 3 --rounds 5 --strategy fedavg --out runs/demo`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from fedvox.admin import download_model, get_status, status_dict
from fedvox.sim.processes import free_port, log_tail, spawn, stop, wait_healthy
from fedvox.sim.report import format_header, format_row, metrics_document
from fedvox.wire.settings import parse_overrides

# small enough that a 2-core CPU finishes 3 sites x 5 rounds in a few minutes
SIM_DEFAULTS = {
    "model.channels": "[16, 32, 64, 128]",
    "model.strides": "[2, 2, 2]",
    "model.num_res_units": "1",
    "train.local_steps": "100",
    "train.patch_size": "32",
    "train.lr": "0.01",
    "train.batch_size": "2",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="training rounds (default 5)")
    parser.add_argument(
        "--strategy", default="fedavg", help="aggregation scheme (see `fedvox strategies`)"
    )
    parser.add_argument(
        "--strategy-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the strategy, e.g. --strategy-param mu=0.01 (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--data", type=Path, help="existing site folders (default: synthesise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="synthetic volume size in voxels")
    parser.add_argument("--config", type=Path, help="server YAML settings file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a server setting, e.g. --set train.local_steps=30",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run already in --out instead of refusing",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after seconds")


def run(args: argparse.Namespace) -> int:
    if args.sites < 1 or args.rounds < 0:
        raise ValueError("--sites must be >= 1 and --rounds >= 0")
    out: Path = args.out
    state = out / "state"
    if (
        (state / "checkpoints").exists()
        and any((state / "checkpoints").iterdir())
        and not args.resume
    ):
        raise ValueError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    site_dirs = _site_dirs(args, out)
    port = free_port()
    address = f"127.0.0.1:{port}"
    overrides = {**({} if args.config else SIM_DEFAULTS), **parse_overrides(args.set)}
    server_args = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--rounds",
        str(args.rounds),
        "--min-sites",
        str(len(site_dirs)),
        "--strategy",
        args.strategy,
        "--seed",
        str(args.seed),
        *(["--config", str(args.config)] if args.config else []),
        *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")],
        *[a for pair in args.strategy_param for a in ("--strategy-param", pair)],
    ]
    logs = out / "logs"
    server = spawn("fedvox.server", server_args, logs / "server.log")
    clients: dict[str, Any] = {}
    try:
        wait_healthy(address, server)
        threads = str(max(1, (os.cpu_count() or 1) // len(site_dirs)))
        for site_dir in site_dirs:
            clients[site_dir.name] = spawn(
                "fedvox.client",
                [
                    "--site-id",
                    site_dir.name,
                    "--server",
                    address,
                    "--data-root",
                    str(site_dir),
                    "--threads",
                    threads,
                    "--set",
                    f"state_dir={out / 'site-state' / site_dir.name}",
                ],
                logs / f"{site_dir.name}.log",
            )
        print(
            f"fedvox simulate: server {address}, {len(site_dirs)} sites, strategy "
            f"{args.strategy}, logs in {logs}",
            flush=True,
        )
        status = _watch(address, server, clients, logs, [d.name for d in site_dirs], args.timeout)
        digest = download_model(address, out / "global_model.safetensors")
    finally:
        for process in clients.values():
            stop(process)
        stop(server)
    settings = {
        "strategy_params": args.strategy_param,
        "sites": [d.name for d in site_dirs],
        "rounds": args.rounds,
        "strategy": args.strategy,
        "seed": args.seed,
        "overrides": overrides,
        "data": [str(d) for d in site_dirs],
    }
    document = metrics_document(status["history"], settings)
    document["global_model"] = {"path": "global_model.safetensors", "sha256": digest}
    (out / "metrics.json").write_text(json.dumps(document, indent=2))
    initial = document["initial_test_dice"].get("mean")
    final = document["final"].get("test_dice", {}).get("mean")
    if initial is not None and final is not None:
        print(
            f"test Dice of the global model: {initial:.3f} before training -> {final:.3f} "
            f"after {args.rounds} rounds"
        )
    print(f"wrote {out / 'metrics.json'} and {out / 'global_model.safetensors'}")
    return 0


def _site_dirs(args: argparse.Namespace, out: Path) -> list[Path]:
    if args.data is not None:
        dirs = sorted(p for p in args.data.iterdir() if (p / "dataset.json").is_file())
        if not dirs:
            raise ValueError(f"--data {args.data} holds no site folders with a dataset.json")
        return dirs
    from fedvox.synth import generate_federation

    print(
        f"fedvox simulate: synthesising {args.sites} sites of {args.size}^3 CT in {out / 'data'}",
        flush=True,
    )
    return generate_federation(
        out / "data",
        args.sites,
        seed=args.seed,
        size=args.size,
        progress=lambda msg: print(f"  {msg}", flush=True),
    )


def _watch(
    address: str, server: Any, clients: dict[str, Any], logs: Path, sites: list[str], timeout: float
) -> dict[str, Any]:
    """Print a row per finished round and a live progress line until the run is done."""
    deadline = time.monotonic() + timeout
    shown = 0
    live = sys.stdout.isatty()
    print(format_header(sites), flush=True)
    while time.monotonic() < deadline:
        for name, process in {"server": server, **clients}.items():
            if process.poll() is not None and process.returncode != 0:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}; last log "
                    f"lines:\n{log_tail(logs / f'{name}.log')}"
                )
        try:
            status = status_dict(get_status(address, timeout=5))
        except grpc.RpcError:
            time.sleep(1)
            continue
        history = status.get("history", [])
        for entry in history[shown:]:
            print(("\r\033[K" if live else "") + format_row(entry, sites), flush=True)
        shown = len(history)
        if status["phase"] == "done":
            return status
        if live:
            print(
                f"\r\033[K  round {status['current_round']}: {status['current_results']}/"
                f"{status['current_expected']} results",
                end="",
                flush=True,
            )
        time.sleep(1)
    raise TimeoutError(f"the federation did not finish within {timeout:.0f}s")
