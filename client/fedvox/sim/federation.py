"""One whole federation on this machine: a real server process and one real client process per
site on loopback gRPC (mutual TLS unless `insecure`), watched until the server says it is done.

`fedvox simulate` and `fedvox compare` both run their federations through `run_federation`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from fedvox.admin import download_model, get_status, status_dict
from fedvox.sim.processes import (
    client_args,
    free_port,
    log_tail,
    server_args,
    spawn,
    stop,
    wait_healthy,
)
from fedvox.sim.report import metrics_document
from fedvox.tls import ADMIN_CN, TlsFiles, files_in

METRICS_JSON = "metrics.json"
GLOBAL_MODEL = "global_model.safetensors"


@dataclass(frozen=True)
class Federation:
    """What to run. `overrides` are server settings (`--set key=value`), `strategy_params`
    `NAME=VALUE` pairs; `threads` is each client's torch thread count (0: the CPU count divided
    by the number of sites, at least 1); `env` is added to every process's environment."""

    out: Path
    site_dirs: tuple[Path, ...]
    rounds: int
    strategy: str = "fedavg"
    strategy_params: tuple[str, ...] = ()
    seed: int = 0
    config: Path | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 3600.0
    insecure: bool = False
    threads: int = 0
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return [d.name for d in self.site_dirs]

    def client_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // len(self.site_dirs))


class Watcher(Protocol):
    """Told when the processes are up and, about once a second, the server's status."""

    def started(self, address: str, logs: Path) -> None: ...

    def status(self, status: dict[str, Any]) -> None: ...


class Silent:
    def started(self, address: str, logs: Path) -> None:
        pass

    def status(self, status: dict[str, Any]) -> None:
        pass


def run_federation(fed: Federation, watcher: Watcher | None = None) -> dict[str, Any]:
    """Run `fed` to the end; write `metrics.json` and `global_model.safetensors` into `fed.out`
    and return the metrics document. Raises if a process fails or `fed.timeout` passes."""
    if not fed.site_dirs or fed.rounds < 0:
        raise ValueError("a federation needs at least one site and rounds >= 0")
    watcher = watcher or Silent()
    out = fed.out
    state = out / "state"
    tls_args, admin = _security(fed.insecure, out / "certs", fed.sites)
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = [
        *server_args(
            port,
            state,
            rounds=fed.rounds,
            min_sites=len(fed.site_dirs),
            strategy=fed.strategy,
            seed=fed.seed,
            settings=fed.overrides,
        ),
        *(["--config", str(fed.config)] if fed.config else []),
        *[a for pair in fed.strategy_params for a in ("--strategy-param", pair)],
        *tls_args,
    ]
    logs = out / "logs"
    env = dict(fed.env)
    server = spawn("fedvox.server", args, logs / "server.log", env)
    clients: dict[str, Any] = {}
    try:
        wait_healthy(address, server, tls=admin)
        threads = fed.client_threads()
        for site_dir in fed.site_dirs:
            state_dir = out / "site-state" / site_dir.name
            clients[site_dir.name] = spawn(
                "fedvox.client",
                [*client_args(site_dir, address, state_dir, threads=threads), *tls_args],
                logs / f"{site_dir.name}.log",
                env,
            )
        watcher.started(address, logs)
        status = watch_until_done(address, server, clients, logs, fed.timeout, watcher, admin)
        digest = download_model(address, out / GLOBAL_MODEL, tls=admin)
    finally:
        for process in clients.values():
            stop(process)
        stop(server)
    settings = {
        "strategy_params": list(fed.strategy_params),
        "sites": fed.sites,
        "rounds": fed.rounds,
        "strategy": fed.strategy,
        "seed": fed.seed,
        "overrides": dict(fed.overrides),
        "data": [str(d) for d in fed.site_dirs],
    }
    document = metrics_document(status["history"], settings)
    document["global_model"] = {"path": GLOBAL_MODEL, "digest": digest}
    (out / METRICS_JSON).write_text(json.dumps(document, indent=2))
    return document


def _security(insecure: bool, certs: Path, sites: list[str]) -> tuple[list[str], TlsFiles | None]:
    """The TLS flags of the server and the clients, and the operator's certificate: mutual TLS
    with certificates provisioned in `certs` (kept, and extended, on --resume) unless
    `insecure`, which runs everything in plaintext."""
    if insecure:
        return ["--insecure"], None
    from fedvox.provision import provision

    provision(certs, sites)
    return ["--tls-dir", str(certs)], files_in(certs, ADMIN_CN)


def watch_until_done(
    address: str,
    server: Any,
    clients: Mapping[str, Any],
    logs: Path,
    timeout: float,
    watcher: Watcher | None = None,
    tls: TlsFiles | None = None,
) -> dict[str, Any]:
    """Poll the server's status about once a second until the run is done; raises if a process
    (logging to `logs / <name>.log`) fails or `timeout` passes."""
    watcher = watcher or Silent()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in {"server": server, **clients}.items():
            if process.poll() is not None and process.returncode != 0:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}; last log "
                    f"lines:\n{log_tail(logs / f'{name}.log')}"
                )
        try:
            status = status_dict(get_status(address, timeout=5, tls=tls))
        except grpc.RpcError:
            time.sleep(1)
            continue
        watcher.status(status)
        if status["phase"] == "done":
            return status
        time.sleep(1)
    raise TimeoutError(f"the federation did not finish within {timeout:.0f}s")
