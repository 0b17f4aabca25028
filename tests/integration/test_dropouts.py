"""Sites that die: SIGKILL a real client process mid-training and mid-upload. The round
still closes (quorum, once the dead site stops heartbeating), nothing of a half upload
counts, and a site that comes back rejoins the next round."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvox.admin import get_status
from fedvox.sim.processes import client_args, free_port, server_args, spawn, stop, wait_healthy
from fedvox.v1 import federation_pb2 as pb

pytestmark = pytest.mark.integration

SERVER = {
    "insecure": "true",  # loopback only; TLS has its own tests
    "evaluate": "false",
    "quorum": "0.5",
    "site_timeout_s": "4",
    "heartbeat_interval_s": "0.5",
    "round_timeout_s": "120",
    "train.patch_size": "16",
    "model.channels": "[4, 8, 16]",
    "model.strides": "[2, 2]",
    "model.num_res_units": "1",
}

# A site that uploads half of its result, then hangs until it is killed.
HALF_UPLOAD = """
import sys, time, grpc
from fedvox.v1 import federation_pb2 as pb, federation_pb2_grpc as rpc
stub = rpc.FederationServiceStub(grpc.insecure_channel(sys.argv[1]))
stub.Register(pb.RegisterRequest(site_id="site-z", num_examples=3))
while True:
    task = stub.GetTask(pb.GetTaskRequest(site_id="site-z"), timeout=30).task
    if task.type == pb.TASK_TYPE_TRAIN:
        break
def stream():
    yield pb.SubmitRequest(header=pb.SubmitHeader(
        site_id="site-z", task_id=task.task_id, round=task.round, kind=pb.PAYLOAD_KIND_DELTA,
        num_examples=3, digest="0" * 64, size=task.global_size))
    yield pb.SubmitRequest(chunk=pb.SubmitChunk(offset=0, data=b"\\0" * (task.global_size // 2)))
    print("HALF", flush=True)
    time.sleep(3600)
stub.Submit(stream())
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from fedvox.synth import generate_federation

    root = tmp_path_factory.mktemp("sites")
    return generate_federation(root, 3, seed=3, size=32, n_train=3, n_val=1, n_test=1)


def start_server(
    out: Path, rounds: int, min_sites: int, steps: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    settings = {**SERVER, "train.local_steps": str(steps)}
    args = server_args(port, out / "state", rounds=rounds, min_sites=min_sites, settings=settings)
    server = spawn("fedvox.server", args, out / "server.log")
    address = f"127.0.0.1:{port}"
    wait_healthy(address, server)
    return server, address


def start_client(out: Path, site: Path, address: str) -> subprocess.Popen[bytes]:
    settings = {"insecure": "true", "max_backoff_s": "0.5"}
    args = client_args(site, address, out / "site-state" / site.name, settings=settings)
    return spawn("fedvox.client", args, out / f"{site.name}.log")


def wait_for(address: str, done: object, timeout: float = 180) -> pb.GetStatusResponse:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = get_status(address, timeout=5)
        if done(status):  # type: ignore[operator]
            return status
        time.sleep(0.05)
    raise AssertionError(f"timed out; last status:\n{status}")


def train_rounds(status: pb.GetStatusResponse) -> dict[int, list[str]]:
    return {h.round: list(h.sites) for h in status.history if h.kind == "train"}


def test_site_killed_mid_training_then_rejoins(sites: list[Path], tmp_path: Path) -> None:
    server, address = start_server(tmp_path, rounds=3, min_sites=3, steps=400)
    clients = {s.name: start_client(tmp_path, s, address) for s in sites}
    try:
        # site-c is training round 1 when it dies
        wait_for(
            address,
            lambda st: (
                st.current_round == 1
                and any(s.site_id == "site-c" and 0.05 < s.progress < 1 for s in st.sites)
            ),
        )
        clients["site-c"].send_signal(signal.SIGKILL)
        status = wait_for(address, lambda st: st.completed_round >= 1)
        assert train_rounds(status)[1] == ["site-a", "site-b"]  # closed by quorum, not stalled
        assert not next(s for s in status.sites if s.site_id == "site-c").alive
        clients["site-c"] = start_client(tmp_path, sites[2], address)  # it comes back
        status = wait_for(address, lambda st: st.phase == "done")
        assert train_rounds(status)[3] == ["site-a", "site-b", "site-c"]
    finally:
        for client in clients.values():
            stop(client)
        stop(server)


def test_site_killed_mid_upload_counts_nothing(sites: list[Path], tmp_path: Path) -> None:
    server, address = start_server(tmp_path, rounds=1, min_sites=2, steps=2)
    honest = start_client(tmp_path, sites[0], address)
    uploader = subprocess.Popen([sys.executable, "-c", HALF_UPLOAD, address],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert uploader.stdout is not None and uploader.stdout.readline().strip() == "HALF"
        uploader.send_signal(signal.SIGKILL)  # the stream breaks half way
        uploader.wait()
        status = wait_for(address, lambda st: st.completed_round >= 1)
        assert train_rounds(status)[1] == ["site-a"]
        assert "site-z" not in status.history[-1].sites
    finally:
        stop(honest)
        if uploader.poll() is None:
            uploader.kill()
        stop(server)
