"""`fedvox server`: run the aggregation server."""

from __future__ import annotations

import argparse

from fedvox.wire.settings import add_settings_arguments, overrides_from

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
    add_settings_arguments(parser, FLAG_SETTINGS)


def run(args: argparse.Namespace) -> int:
    from fedvox.server.app import serve
    from fedvox.server.config import load_server_config

    serve(load_server_config(args.config, overrides_from(args, FLAG_SETTINGS)))
    return 0
