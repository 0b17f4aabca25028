"""`fedvox server`: run the aggregation server."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedvox.wire.settings import parse_overrides

# flags that are shortcuts for `--set key=value`
FLAG_SETTINGS = {
    "host": str,
    "port": int,
    "state_dir": str,
    "rounds": int,
    "min_sites": int,
    "strategy": str,
    "seed": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file")
    for name, kind in FLAG_SETTINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=0.01 (repeatable)",
    )


def overrides_from(args: argparse.Namespace) -> dict[str, str]:
    overrides = parse_overrides(args.set)
    for name in FLAG_SETTINGS:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = str(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    from fedvox.server.app import serve
    from fedvox.server.config import load_server_config

    serve(load_server_config(args.config, overrides_from(args)))
    return 0
