"""Helpers shared by the unit and integration tests."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import grpc
import numpy as np
import pytest

from fedvox.server.app import RunningServer, start
from fedvox.server.config import ServerConfig
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.errors import WireError
from fedvox.wire.tensors import StateDict, to_safetensors


@contextmanager
def raises_wire(code: grpc.StatusCode, match: str) -> Iterator[pytest.ExceptionInfo[WireError]]:
    """Expect a WireError whose message matches the regex `match` and whose code is `code`."""
    with pytest.raises(WireError, match=match) as info:
        yield info
    assert info.value.code == code, f"expected {code.name}, got {info.value.code.name}"


def blake3_hex(data: bytes | bytearray) -> str:
    """The BLAKE3 digest, straight from the blake3 package (not through fedvox)."""
    return blake3.blake3(data).hexdigest()


def f32(values: object) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def assert_state_equal(got: StateDict, want: StateDict) -> None:
    """Same names, shapes, dtypes and bit-identical values."""
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(array).tobytes(), name


# ---- a real server on loopback, driven by hand (integration tests) ----

MAX_CHUNK = 1024  # max_chunk_kb=1
RPC_TIMEOUT = 10.0
# the initial model site-a uploads for round 0 in federation()
INITIAL: StateDict = {"w": f32([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": f32([0.5, -0.5, 0.0])}


@dataclass
class Federation:
    """A server whose round 1 (TRAIN) is open for site-a and site-b."""

    running: RunningServer
    channel: grpc.Channel
    fed: pb_grpc.FederationServiceStub
    admin: pb_grpc.AdminServiceStub
    init_task: pb.Task
    init_blob: bytes
    tasks: dict[str, pb.Task]  # the round-1 TRAIN task of each site

    def status(self) -> pb.GetStatusResponse:
        return self.admin.GetStatus(pb.GetStatusRequest(), timeout=RPC_TIMEOUT)

    def header(self, site: str, blob: bytes, **changes: Any) -> pb.SubmitHeader:
        """A correct DELTA header for `site`'s task and `blob`, with `changes` applied."""
        task = self.tasks[site]
        header = pb.SubmitHeader(
            site_id=site,
            task_id=task.task_id,
            round=task.round,
            kind=pb.PAYLOAD_KIND_DELTA,
            num_examples=1,
            digest=blake3_hex(blob),
            size=len(blob),
        )
        for name, value in changes.items():
            if name == "metrics":
                header.metrics.update(value)
            else:
                setattr(header, name, value)
        return header

    def submit(self, requests: Iterable[pb.SubmitRequest]) -> pb.SubmitResponse:
        return self.fed.Submit(iter(list(requests)), timeout=RPC_TIMEOUT)

    def submit_delta(self, site: str, delta: StateDict, **changes: Any) -> pb.SubmitResponse:
        blob = to_safetensors(delta)
        return self.submit(messages(self.header(site, blob, **changes), blob))


def chunks(blob: bytes, size: int = MAX_CHUNK) -> list[pb.SubmitRequest]:
    return [
        pb.SubmitRequest(chunk=pb.SubmitChunk(offset=o, data=blob[o : o + size]))
        for o in range(0, len(blob), size)
    ]


def messages(header: pb.SubmitHeader, blob: bytes) -> list[pb.SubmitRequest]:
    return [pb.SubmitRequest(header=header), *chunks(blob)]


def rpc_error(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    return error


def wait_for_task(fed: pb_grpc.FederationServiceStub, site: str) -> pb.Task:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        reply = fed.GetTask(pb.GetTaskRequest(site_id=site), timeout=5)
        if reply.task.type != pb.TASK_TYPE_WAIT:
            return reply.task
    raise AssertionError(f"no task for {site} within 15 s")


def download(fed: pb_grpc.FederationServiceStub, digest: str, offset: int = 0) -> bytes:
    request = pb.DownloadRequest(site_id="site-a", digest=digest, offset=offset)
    replies = list(fed.Download(request, timeout=RPC_TIMEOUT))
    assert replies and replies[0].offset == offset
    position = offset
    for reply in replies:
        assert reply.offset == position
        position += len(reply.data)
    assert {r.total_size for r in replies} == {position}
    return b"".join(r.data for r in replies)


def server_config(**settings: Any) -> ServerConfig:
    """A ServerConfig for a test server on loopback without TLS (set explicitly where the
    configuration has an `insecure` switch)."""
    if "insecure" in {f.name for f in dataclasses.fields(ServerConfig)}:
        settings.setdefault("insecure", True)
    return ServerConfig(**settings)


@contextmanager
def federation(state_dir: Path, **overrides: Any) -> Iterator[Federation]:
    """An in-process server on loopback, driven by hand to round 1 (see Federation);
    `overrides` replace ServerConfig settings (e.g. longer timeouts)."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "state_dir": str(state_dir),
        "min_sites": 1,
        "rounds": 2,
        "evaluate": False,
        "round_timeout_s": 30,
        "poll_timeout_s": 2,
        "max_chunk_kb": MAX_CHUNK // 1024,
    }
    running = start(server_config(**{**settings, **overrides}))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        fed = pb_grpc.FederationServiceStub(channel)
        fed.Register(pb.RegisterRequest(site_id="site-a", num_examples=10), timeout=RPC_TIMEOUT)
        init_task = wait_for_task(fed, "site-a")
        # site-b joins while the INIT round (one site) is open, so round 1 samples both
        fed.Register(pb.RegisterRequest(site_id="site-b", num_examples=30), timeout=RPC_TIMEOUT)
        blob = to_safetensors(INITIAL)
        header = pb.SubmitHeader(
            site_id="site-a",
            task_id=init_task.task_id,
            round=init_task.round,
            kind=pb.PAYLOAD_KIND_FULL,
            digest=blake3_hex(blob),
            size=len(blob),
        )
        reply = fed.Submit(iter(messages(header, blob)), timeout=RPC_TIMEOUT)
        assert reply.accepted and not reply.duplicate
        tasks = {site: wait_for_task(fed, site) for site in ("site-a", "site-b")}
        yield Federation(
            running, channel, fed, pb_grpc.AdminServiceStub(channel), init_task, blob, tasks
        )
    finally:
        channel.close()
        running.stop(0)
