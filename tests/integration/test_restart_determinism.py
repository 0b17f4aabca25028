"""A server killed with SIGKILL at random moments and restarted on its state directory
finishes with exactly the model an uninterrupted run produces: accepted updates survive
in the round journal, scheme state (FedAdam's moments, SCAFFOLD's c) in checkpoints,
site state (c_i) per round, and each round's data is seeded by (seed, site, round)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedvox.admin import download_model, get_status
from fedvox.sim.processes import client_args, free_port, server_args, spawn, stop, wait_healthy

pytestmark = pytest.mark.integration

TINY = {
    "evaluate": "false",
    "train.local_steps": "4",
    "train.patch_size": "16",
    "model.channels": "[4, 8, 16]",
    "model.strides": "[2, 2]",
    "model.num_res_units": "1",
    "round_timeout_s": "120",
    "insecure": "true",  # loopback only; TLS has its own tests
}
ROUNDS = 4


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from fedvox.synth import generate_federation

    root = tmp_path_factory.mktemp("sites")
    return generate_federation(root, 3, seed=2, size=32, n_train=3, n_val=1, n_test=1)


Kill = tuple[int, int, float]  # (round, accepted results, extra delay in seconds)


def progress(state: Path) -> tuple[int, int]:
    """(the round in progress, its accepted results), from what the server has made durable:
    the newest checkpoint, and the accepted entries in the next round's journal."""
    done = [int(p.name[6:]) for p in (state / "checkpoints").glob("round-*")]
    round_ = max(done, default=0) + 1
    journal = state / "journal" / f"round-{round_:06d}"
    return round_, sum(p.name != "round.json" for p in journal.glob("*.json"))


def federate(
    out: Path, sites: list[Path], strategy: str, kills: list[Kill]
) -> tuple[bytes, list[str]]:
    """Run to the end, SIGKILLing and restarting the server once round r holds j accepted
    results (plus a delay), for each (r, j, delay) in `kills`; returns the final model's
    bytes and a trace of the (round, results) seen and the kills made."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = server_args(
        port, out / "state", rounds=ROUNDS, min_sites=3, strategy=strategy, settings=TINY
    )
    server = spawn("fedvox.server", args, out / "server.log")
    clients: list[subprocess.Popen[bytes]] = []
    try:
        wait_healthy(address, server)
        for site in sites:
            state = out / "site-state" / site.name
            settings = {"insecure": "true", "max_backoff_s": "0.5"}
            command = client_args(site, address, state, settings=settings)
            clients.append(spawn("fedvox.client", command, out / f"{site.name}.log"))
        pending = sorted(kills)
        trace: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # kills go first and read the state folder, not gRPC status, so a point the poll
            # missed (a busy server answering slowly) still fires, at the latest after the end
            at = progress(out / "state")
            if not trace or trace[-1] != str(at):
                trace.append(str(at))
            if pending and at >= pending[0][:2]:
                time.sleep(pending.pop(0)[2])
                trace.append("kill")
                server.send_signal(signal.SIGKILL)  # no chance to clean up
                server.wait()
                server = spawn("fedvox.server", args, out / "server.log")
                wait_healthy(address, server)
                continue
            if not pending and get_status(address, timeout=10).phase == "done":
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"{strategy}: no result in time; see {out}")
        assert get_status(address).completed_round == ROUNDS
        download_model(address, out / "model.safetensors")
        return (out / "model.safetensors").read_bytes(), trace
    finally:
        for client in clients:
            stop(client)
        stop(server)


@pytest.mark.parametrize("strategy", ["fedadam", "scaffold"])
def test_random_kills_give_the_uninterrupted_model(
    strategy: str, sites: list[Path], tmp_path: Path
) -> None:
    straight, _ = federate(tmp_path / "straight", sites, strategy, kills=[])
    # kill points at random through the run: before any upload, while receiving, after
    # accepting some, while aggregating and writing the checkpoint (all 3 accepted)
    rng = random.Random(f"kills-{strategy}")
    # rounds 1-3, so the fourth always remains to run after the last kill
    kills = [(r, rng.randint(0, 3), rng.uniform(0.0, 0.3)) for r in (1, 2, 3)]
    restarted, trace = federate(tmp_path / "restarted", sites, strategy, kills)
    log = (tmp_path / "restarted" / "server.log").read_text()
    killed = trace.count("kill")
    assert killed == len(kills), f"kills {kills}, seen {' '.join(trace)}"
    assert log.count("server: listening") == 1 + killed
    assert restarted == straight
