"""`fedvox simulate --sites 3 --rounds 5 --strategy fedavg --out runs/demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedvox.sim.federation import GLOBAL_MODEL, METRICS_JSON, Federation, run_federation
from fedvox.sim.report import format_header, format_row
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
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC instead of mutual TLS with certificates provisioned in OUT/certs",
    )


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
    overrides = {**({} if args.config else SIM_DEFAULTS), **parse_overrides(args.set)}
    fed = Federation(
        out=out,
        site_dirs=tuple(site_dirs),
        rounds=args.rounds,
        strategy=args.strategy,
        strategy_params=tuple(args.strategy_param),
        seed=args.seed,
        config=args.config,
        overrides=overrides,
        timeout=args.timeout,
        insecure=args.insecure,
    )
    document = run_federation(fed, TablePrinter(fed.sites, args.strategy))
    initial = document["initial_test_dice"].get("mean")
    final = document["final"].get("test_dice", {}).get("mean")
    if initial is not None and final is not None:
        print(
            f"test Dice of the global model: {initial:.3f} before training -> {final:.3f} "
            f"after {args.rounds} rounds"
        )
    print(f"wrote {out / METRICS_JSON} and {out / GLOBAL_MODEL}")
    return 0


class TablePrinter:
    """`fedvox simulate`'s output: a row per finished round and a live progress line."""

    def __init__(self, sites: list[str], strategy: str) -> None:
        self.sites = sites
        self.strategy = strategy
        self.shown = 0
        self.live = sys.stdout.isatty()

    def started(self, address: str, logs: Path) -> None:
        print(
            f"fedvox simulate: server {address}, {len(self.sites)} sites, strategy "
            f"{self.strategy}, logs in {logs}",
            flush=True,
        )
        print(format_header(self.sites), flush=True)

    def status(self, status: dict[str, Any]) -> None:
        history = status.get("history", [])
        for entry in history[self.shown :]:
            print(("\r\033[K" if self.live else "") + format_row(entry, self.sites), flush=True)
        self.shown = len(history)
        if self.live and status["phase"] != "done":
            print(
                f"\r\033[K  round {status['current_round']}: {status['current_results']}/"
                f"{status['current_expected']} results",
                end="",
                flush=True,
            )


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
