"""A site whose update is refused for its content: real server and client processes, one of
three clients uploading NaN deltas (ClientConfig.byzantine = "nan").

The refusal ends that site's part in its round, so each round closes as soon as the two honest
sites are in, far inside round_timeout_s, and aggregates their two updates; the NaN site goes
back to polling (no crash, no retraining of the refused task), is sampled again in the next
round and is refused again there; the federation finishes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from fedvox.sim.processes import (
    client_args,
    free_port,
    log_tail,
    server_args,
    spawn,
    stop,
    wait_healthy,
)

pytestmark = pytest.mark.integration

ROUND_TIMEOUT_S = 240.0
ROUNDS = 2
SERVER = {
    "insecure": "true",  # loopback only; TLS has its own tests
    "evaluate": "false",
    "heartbeat_interval_s": "0.5",
    "poll_timeout_s": "1",
    "round_timeout_s": str(ROUND_TIMEOUT_S),
    "site_timeout_s": str(ROUND_TIMEOUT_S),  # the NaN site must not be dropped as dead
    "train.local_steps": "3",
    "train.patch_size": "16",
    "model.channels": "[4, 8, 16]",
    "model.strides": "[2, 2]",
    "model.num_res_units": "1",
}


def test_nan_site_is_left_out_at_once_and_rejoins_the_next_round(tmp_path: Path) -> None:
    from fedvox.synth import generate_federation

    sites = generate_federation(
        tmp_path / "sites", 3, seed=5, size=32, n_train=2, n_val=1, n_test=1
    )
    nan_site = sites[0].name
    out = tmp_path / "run"
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = server_args(port, out / "state", rounds=ROUNDS, min_sites=3, settings=SERVER)
    server = spawn("fedvox.server", args, out / "server.log")
    clients: dict[str, subprocess.Popen[bytes]] = {}
    try:
        wait_healthy(address, server)
        for site in sites:
            settings = {"insecure": "true", "max_backoff_s": "0.5"}
            if site.name == nan_site:
                settings["byzantine"] = "nan"
            state = out / "site-state" / site.name
            clients[site.name] = spawn(
                "fedvox.client",
                client_args(site, address, state, settings=settings),
                out / f"{site.name}.log",
            )
        codes = wait_all(clients, out, timeout=2 * ROUND_TIMEOUT_S)
    finally:
        for client in clients.values():
            stop(client)
        stop(server)
    assert codes == {site.name: 0 for site in sites}  # every client ran to STOP, none crashed
    history = json.loads((out / "state" / "history.json").read_text())
    train = [h for h in history if h["kind"] == "train"]
    honest = sorted(s.name for s in sites if s.name != nan_site)
    assert [h["round"] for h in train] == list(range(1, ROUNDS + 1))
    for summary in train:
        assert summary["sites"] == honest, summary
        assert list(summary["refused"]) == [nan_site], summary
        assert "holds NaN or Inf" in summary["refused"][nan_site]
        # closed once the honest sites were in, not at the deadline
        assert summary["duration_seconds"] < ROUND_TIMEOUT_S / 4, summary
    client_log = (out / f"{nan_site}.log").read_text(errors="replace")
    assert client_log.count("refused (INVALID_ARGUMENT") == ROUNDS, log_tail(
        out / f"{nan_site}.log"
    )
    # one training per round: the refused task was not retrained
    assert client_log.count("downloading global model") == ROUNDS


def wait_all(
    clients: dict[str, subprocess.Popen[bytes]], out: Path, timeout: float
) -> dict[str, int]:
    """Every client's exit code; a client exits once the server tells it the run is over."""
    deadline = time.monotonic() + timeout
    try:
        return {
            name: client.wait(max(deadline - time.monotonic(), 0.1))
            for name, client in clients.items()
        }
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"not done in {timeout:.0f}s:\n{log_tail(out / 'server.log', 30)}"
        ) from None
