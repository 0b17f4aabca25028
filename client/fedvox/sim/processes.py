"""Starting and watching the real server and client processes of a simulation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedvox.client.connection import Connection
from fedvox.tls import TlsFiles, open_channel
from fedvox.v1 import federation_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_args(settings: Mapping[str, object]) -> list[str]:
    """`--set key=value` for each setting, as the server and client command lines take them."""
    return [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]


def server_args(
    port: int,
    state: Path,
    *,
    rounds: int,
    min_sites: int,
    strategy: str = "fedavg",
    seed: int = 0,
    settings: Mapping[str, object] | None = None,
) -> list[str]:
    """A loopback server's command line; TLS and other flags are appended by the caller."""
    return [
        *("--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)),
        *("--rounds", str(rounds), "--min-sites", str(min_sites)),
        *("--strategy", strategy, "--seed", str(seed)),
        *set_args(settings or {}),
    ]


def client_args(
    site: Path,
    address: str,
    state: Path,
    *,
    threads: int = 1,
    settings: Mapping[str, object] | None = None,
) -> list[str]:
    """The command line of the client for the site folder `site`, named after it."""
    return [
        *("--site-id", site.name, "--server", address, "--data-root", str(site)),
        *("--threads", str(threads), "--set", f"state_dir={state}"),
        *set_args(settings or {}),
    ]


def wait_for_tasks(
    sites: Sequence[Connection], kind: int, count: int, timeout_s: float = 300.0
) -> dict[int, pb.Task]:
    """Poll the sites' connections until `count` of them hold a task of type `kind`; the tasks
    by site index (benchmarks and tests that play the sites themselves)."""
    found: dict[int, pb.Task] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)} of {count} sites got task type {kind}")
        for index, site in enumerate(sites):
            if index not in found:
                task = site.get_task(poll_timeout_s=0.5).task
                if task.type == kind:
                    found[index] = task
    return found


def spawn(
    module: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def wait_healthy(
    address: str,
    process: subprocess.Popen[bytes],
    timeout: float = 60.0,
    tls: TlsFiles | None = None,
) -> None:
    """Block until the server's gRPC health service says SERVING (`tls`: a client certificate
    for a mutual-TLS server, None for a plaintext one)."""
    deadline = time.monotonic() + timeout
    with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"the server at {address} was not healthy after {timeout:.0f}s")


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
