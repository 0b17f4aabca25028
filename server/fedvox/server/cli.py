"""`fedvox server`: run the aggregation server."""

from __future__ import annotations

import argparse
import json

from fedvox.wire.settings import add_settings_arguments, overrides_from, parse_overrides

# flags that are shortcuts for `--set key=value`
FLAG_SETTINGS = {
    "host": str,
    "port": int,
    "state_dir": str,
    "rounds": int,
    "min_sites": int,
    "strategy": str,
    "seed": int,
    "tls_dir": str,  # mutual TLS: a `fedvox provision` folder (or the three files below)
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, FLAG_SETTINGS)
    parser.add_argument(
        "--strategy-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the strategy, e.g. --strategy-param mu=0.01 (repeatable)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext without client certificates (no TLS settings needed; warned)",
    )


def strategy_overrides(pairs: list[str]) -> dict[str, str]:
    """--strategy-param pairs as one `strategy_params` override (a JSON mapping)."""
    return {"strategy_params": json.dumps(parse_overrides(pairs))} if pairs else {}


def run(args: argparse.Namespace) -> int:
    from fedvox.server.app import serve
    from fedvox.server.config import load_server_config

    overrides = overrides_from(args, FLAG_SETTINGS) | strategy_overrides(args.strategy_param)
    if args.insecure:
        overrides["insecure"] = "true"
    serve(load_server_config(args.config, overrides))
    return 0
