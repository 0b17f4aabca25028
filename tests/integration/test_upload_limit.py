"""`max_concurrent_uploads` against a real server process: more sites upload at once than the
cap allows, and every upload is accepted while the server never receives more than `cap` at
once; a queued or receiving upload whose client goes away gives its place up, also when
the client freezes without closing its connection (the server's keepalive pings find it).

The server logs each new high-water mark of upload slots held at once; the tests read it
from the process's log, the same line an operator sees."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedvox.client.connection import Connection
from fedvox.sim.processes import free_port, log_tail, server_args, spawn, stop, wait_healthy
from fedvox.sim.processes import wait_for_tasks as wait_for_sites_tasks
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.chunks import iter_buffer_chunks
from fedvox.wire.tensors import parse_safetensors, to_safetensors
from tests.helpers import blake3_hex, download

pytestmark = pytest.mark.integration

ELEMENTS = 1_000_000  # 4 MB per upload: long enough on loopback that released uploads overlap
_HIGH_WATER = re.compile(r"uploads: (\d+) slot\(s\) held at once")
_QUEUED = re.compile(r"uploads: (site-\w+) queues for a slot")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def high_water(self) -> int:
        return max(map(int, _HIGH_WATER.findall(self.log_text())), default=0)

    def completed_round(self) -> int:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.AdminServiceStub(channel)
            return int(stub.GetStatus(pb.GetStatusRequest(), timeout=10).completed_round)

    def status(self) -> pb.GetStatusResponse:
        with grpc.insecure_channel(self.address) as channel:
            return pb_grpc.AdminServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)


def start_server(tmp: Path, sites: int, cap: int) -> Server:
    port = free_port()
    settings = {
        "evaluate": "false",
        "poll_timeout_s": "0.5",
        "round_timeout_s": "300",
        "site_timeout_s": "300",  # the sites here are driven by hand and send no heartbeats
        "max_concurrent_uploads": str(cap),
    }
    args = server_args(port, tmp / "state", rounds=1, min_sites=sites, settings=settings)
    server = Server(
        spawn("fedvox.server", [*args, "--insecure"], tmp / "server.log"),
        f"127.0.0.1:{port}",
        tmp / "server.log",
    )
    wait_healthy(server.address, server.process)
    return server


@pytest.fixture
def sites_in_round_1(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Server, list[Connection], dict[str, pb.Task]]]:
    """A server with cap `request.param[1]` whose round 1 has a TRAIN task for each of
    `request.param[0]` registered sites (site-a, site-b, ...); site-a uploaded the zero model."""
    n_sites, cap = request.param
    server = start_server(tmp_path, n_sites, cap)
    names = [f"site-{chr(ord('a') + i)}" for i in range(n_sites)]
    connections = [Connection(server.address, name, give_up_after_s=30) for name in names]
    try:
        for connection in connections:
            connection.register(1, {})
        init = wait_for_tasks(connections, pb.TASK_TYPE_INIT, 1)
        (site, task), *_ = init.items()
        reply = submit(connections[names.index(site)], task, model_blob(0.0), pb.PAYLOAD_KIND_FULL)
        assert reply.accepted and not reply.duplicate
        yield server, connections, wait_for_tasks(connections, pb.TASK_TYPE_TRAIN, n_sites)
    except BaseException:
        print(log_tail(server.log, 40))
        raise
    finally:
        for connection in connections:
            connection.close()
        stop(server.process)


def model_blob(value: float) -> bytes:
    return to_safetensors({"w": np.full(ELEMENTS, value, np.float32)})


def wait_for_tasks(
    connections: list[Connection], kind: pb.TaskType, count: int
) -> dict[str, pb.Task]:
    """`fedvox.sim.processes.wait_for_tasks`, by site id."""
    found = wait_for_sites_tasks(connections, kind, count, timeout_s=60)
    return {connections[index].site_id: task for index, task in found.items()}


def header(site: str, task: pb.Task, blob: bytes, kind: pb.PayloadKind) -> pb.SubmitHeader:
    return pb.SubmitHeader(
        site_id=site,
        task_id=task.task_id,
        round=task.round,
        kind=kind,
        num_examples=1,
        digest=blake3_hex(blob),
        size=len(blob),
    )


def submit(
    connection: Connection, task: pb.Task, blob: bytes, kind: pb.PayloadKind
) -> pb.SubmitResponse:
    return connection.submit(header(connection.site_id, task, blob, kind), blob)


@pytest.mark.parametrize("sites_in_round_1", [(6, 2)], indirect=True)
def test_more_uploaders_than_the_cap_all_accepted_with_at_most_cap_buffers(
    sites_in_round_1: tuple[Server, list[Connection], dict[str, pb.Task]],
) -> None:
    server, connections, tasks = sites_in_round_1
    # site i uploads a delta of i + 1 everywhere; equal weights: the new model is the mean, 3.5
    blobs = {c.site_id: model_blob(float(i + 1)) for i, c in enumerate(connections)}
    gate = threading.Barrier(len(connections))

    def upload(connection: Connection) -> pb.SubmitResponse:
        gate.wait()
        site = connection.site_id
        return submit(connection, tasks[site], blobs[site], pb.PAYLOAD_KIND_DELTA)

    with ThreadPoolExecutor(len(connections)) as pool:
        replies = list(pool.map(upload, connections))
    assert [(r.accepted, r.duplicate) for r in replies] == [(True, False)] * len(connections)
    deadline = time.monotonic() + 60
    while server.completed_round() < 1:
        assert time.monotonic() < deadline, log_tail(server.log)
        time.sleep(0.1)
    # the cap was reached (the uploads did overlap) and never passed; the rest queued
    assert server.high_water() == 2, log_tail(server.log, 40)
    assert len(set(_QUEUED.findall(server.log_text()))) >= 1
    status = server.status()
    model = parse_safetensors(download(connections[0].stub, status.global_digest))
    np.testing.assert_array_equal(model["w"], np.full(ELEMENTS, 3.5, np.float32))


@pytest.mark.parametrize("sites_in_round_1", [(3, 1)], indirect=True)
def test_a_client_that_goes_away_frees_its_place(
    sites_in_round_1: tuple[Server, list[Connection], dict[str, pb.Task]],
) -> None:
    """site-a stalls mid-upload holding the only buffer; site-b queues behind it and gives up;
    site-c queues too. When site-a's call is cancelled, site-c gets the buffer and is accepted;
    site-a and site-b then upload again and are accepted: no place was lost."""
    server, connections, tasks = sites_in_round_1
    a, b, c = connections
    blob = model_blob(1.0)
    release = threading.Event()

    def stalled() -> Iterator[pb.SubmitRequest]:
        yield pb.SubmitRequest(
            header=header("site-a", tasks["site-a"], blob, pb.PAYLOAD_KIND_DELTA)
        )
        offset, data = next(iter_buffer_chunks(blob))
        yield pb.SubmitRequest(chunk=pb.SubmitChunk(offset=offset, data=bytes(data)))
        release.wait(60)

    held = a.stub.Submit.future(stalled(), timeout=60)
    wait_for_log(server, r"uploads: site-a takes a slot")
    queued_b = b.stub.Submit.future(iter(messages("site-b", tasks["site-b"], blob)), timeout=60)
    wait_for_log(server, r"uploads: site-b queues for a slot")
    queued_b.cancel()
    with ThreadPoolExecutor(1) as pool:
        reply_c = pool.submit(submit, c, tasks["site-c"], blob, pb.PAYLOAD_KIND_DELTA)
        wait_for_log(server, r"uploads: site-c queues for a slot")
        time.sleep(1.0)  # site-c stays queued while site-a holds the buffer
        assert not reply_c.done()
        held.cancel()
        release.set()
        assert reply_c.result(timeout=60).accepted
    for connection in (a, b):
        assert submit(connection, tasks[connection.site_id], blob, pb.PAYLOAD_KIND_DELTA).accepted
    assert server.high_water() == 1


def messages(site: str, task: pb.Task, blob: bytes) -> list[pb.SubmitRequest]:
    return [
        pb.SubmitRequest(header=header(site, task, blob, pb.PAYLOAD_KIND_DELTA)),
        *(
            pb.SubmitRequest(chunk=pb.SubmitChunk(offset=o, data=bytes(d)))
            for o, d in iter_buffer_chunks(blob)
        ),
    ]


def wait_for_log(server: Server, pattern: str) -> None:
    deadline = time.monotonic() + 30
    while not re.search(pattern, server.log_text()):
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{log_tail(server.log, 30)}"
        time.sleep(0.05)


# A site that uploads its first chunk and then stops answering (SIGSTOP from the test): its
# connection stays open, so only the server's keepalive pings can tell that it is gone.
STALLED_UPLOAD = """
import sys, time, grpc
from fedvox.v1 import federation_pb2 as pb, federation_pb2_grpc as rpc
stub = rpc.FederationServiceStub(grpc.insecure_channel(sys.argv[1]))
header = pb.SubmitHeader.FromString(bytes.fromhex(sys.argv[2]))
def stream():
    yield pb.SubmitRequest(header=header)
    yield pb.SubmitRequest(chunk=pb.SubmitChunk(offset=0, data=b"\\0" * 65536))
    print("SENT", flush=True)
    time.sleep(3600)
stub.Submit(stream(), timeout=3600)
"""


@pytest.mark.parametrize("sites_in_round_1", [(2, 1)], indirect=True)
def test_a_site_that_vanishes_mid_upload_frees_its_place(
    sites_in_round_1: tuple[Server, list[Connection], dict[str, pb.Task]], tmp_path: Path
) -> None:
    """site-a holds the only place and freezes without closing its connection; the server's
    keepalive (30 s + 10 s) ends its call, and site-b's queued upload is then accepted."""
    server, (_, b), tasks = sites_in_round_1
    blob = model_blob(1.0)
    frozen = header("site-a", tasks["site-a"], blob, pb.PAYLOAD_KIND_DELTA)
    stalled = subprocess.Popen(
        [sys.executable, "-c", STALLED_UPLOAD, server.address, frozen.SerializeToString().hex()],
        stdout=subprocess.PIPE,
    )
    try:
        assert stalled.stdout is not None and stalled.stdout.readline() == b"SENT\n"
        wait_for_log(server, r"uploads: site-a takes a slot")
        stalled.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        reply = submit(b, tasks["site-b"], blob, pb.PAYLOAD_KIND_DELTA)
        waited = time.monotonic() - began
    finally:
        stalled.kill()
        stalled.wait()
    assert reply.accepted and not reply.duplicate
    assert 20 < waited < 90, waited  # freed by the keepalive, not at once and not at a deadline
    assert server.high_water() == 1
