"""`fedvox strategies`: the registered aggregation schemes and their parameters."""

from __future__ import annotations

import argparse
import inspect

from fedvox.server.strategies import REGISTRY
from fedvox.server.strategies.base import params_doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="show only this scheme, with its full description")


def run(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else sorted(REGISTRY)
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
        cls = REGISTRY[name]
        doc = inspect.getdoc(cls) or ""
        print(f"{name:<12} {doc.splitlines()[0] if doc else ''}")
        for param, kind, default in params_doc(cls):
            print(f"{'':<12}   --strategy-param {param}={default}  ({kind})")
        if args.name:
            print(f"\n{doc}")
    return 0
