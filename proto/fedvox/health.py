"""`fedvox health`: exit 0 when the server's gRPC health service says SERVING, 1 otherwise.

Meant for container health checks: on a mutual-TLS server it needs a certificate like any other
caller (the operator's, from --tls-dir or $FEDVOX_TLS_DIR), and --insecure for a plaintext one.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedvox.tls import TlsFiles, add_cli_arguments, open_channel, tls_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    port = os.environ.get("FEDVOX_SERVER_PORT", "8787")
    parser.add_argument(
        "--server", default=f"127.0.0.1:{port}", help="HOST:PORT (default 127.0.0.1:$PORT)"
    )
    parser.add_argument("--service", default="", help="the service to ask about (default: all)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait")
    add_cli_arguments(parser)


def check(address: str, tls: TlsFiles | None, service: str = "", timeout: float = 4.0) -> bool:
    """True when the server answers SERVING for `service`; an RpcError when it cannot answer."""
    with open_channel(address, tls) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def run(args: argparse.Namespace) -> int:
    try:
        serving = check(args.server, tls_from_args(args), args.service, args.timeout)
    except grpc.RpcError as exc:
        print(f"fedvox health: {args.server}: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    print("SERVING" if serving else "NOT SERVING")
    return 0 if serving else 1
