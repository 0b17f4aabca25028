"""`fedvox download`: save the server's current global model as safetensors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from fedvox.admin import download_model
from fedvox.tls import add_cli_arguments, tls_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="localhost:8787", help="HOST:PORT of the server")
    parser.add_argument("--out", type=Path, default=Path("global_model.safetensors"))
    add_cli_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        digest = download_model(args.server, args.out, tls=tls_from_args(args))
    except grpc.RpcError as exc:
        print(f"fedvox download: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (blake3 {digest})")
    return 0
