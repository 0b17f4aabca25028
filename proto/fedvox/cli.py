"""The `fedvox` command. Subcommands import their package lazily, so the server image
(which has no torch) can still run `fedvox server`, `fedvox status` and `fedvox download`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedvox.wire.settings import ConfigError

# subcommand -> (module with add_arguments/run, help)
COMMANDS = {
    "simulate": ("fedvox.sim.cli", "run a whole federation on this machine over loopback gRPC"),
    "compare": ("fedvox.compare.cli", "compare schemes and baselines on non-IID scenarios"),
    "server": ("fedvox.server.cli", "run the aggregation server"),
    "client": ("fedvox.client.cli", "run one site client"),
    "strategies": ("fedvox.server.strategies.cli", "list the aggregation schemes and parameters"),
    "synth": ("fedvox.synth.cli", "generate synthetic head CT sites"),
    "check-data": ("fedvox.client.check_cli", "check sites' CT data and summarise it"),
    "ingest": ("fedvox.client.ingest", "convert DICOM CT series to NIfTI with a dataset.json"),
    "status": ("fedvox.admin", "show a running server's rounds, sites and metrics"),
    "download": ("fedvox.admin_download", "download the current global model"),
    "provision": ("fedvox.provision", "make or extend the federation's TLS certificates"),
    "health": ("fedvox.health", "exit 0 when the server's gRPC health check says SERVING"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedvox", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if a in COMMANDS), None)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:  # only the chosen one is imported (and needs its dependencies)
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sub_parser)
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(modules[args.command].run(args))
    except (ConfigError, ValueError) as exc:
        print(f"fedvox {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
