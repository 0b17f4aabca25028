"""A site's upload chunk size (`Connection.submit(chunk_size=...)`) against a real server
whose `max_chunk_kb` is below fedvox's default 1 MiB chunks."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedvox.client.connection import Connection
from fedvox.server.app import RunningServer, start
from fedvox.v1 import federation_pb2 as pb
from fedvox.wire.tensors import to_safetensors
from tests.helpers import blake3_hex, server_config, wait_for_task

pytestmark = pytest.mark.integration

CAP_KB = 64
GIVE_UP_S = 30.0  # a retried refusal would take this long
# 1.2 MB: more than one default chunk, so the default chunking sends 1 MiB messages
BLOB = to_safetensors({"w": np.arange(300_000, dtype=np.float32)})


@pytest.fixture
def server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[RunningServer]:
    running = start(
        server_config(
            host="127.0.0.1",
            port=0,
            state_dir=str(tmp_path),
            min_sites=1,
            rounds=1,
            evaluate=False,
            poll_timeout_s=1,
            max_chunk_kb=CAP_KB,
        )
    )
    try:
        assert "max_chunk_kb=64 is below the 1024 KiB chunks fedvox sites upload in" in caplog.text
        yield running
    finally:
        running.stop(0)


def _init_header(site: Connection) -> pb.SubmitHeader:
    site.register(1, {})
    task = wait_for_task(site.stub, site.site_id)
    assert task.type == pb.TASK_TYPE_INIT
    return pb.SubmitHeader(
        site_id=site.site_id,
        task_id=task.task_id,
        round=task.round,
        kind=pb.PAYLOAD_KIND_FULL,
        num_examples=1,
        digest=blake3_hex(BLOB),
        size=len(BLOB),
    )


def _refused_at_once(call: Callable[[], object]) -> grpc.Call:
    """The RpcError `call` raises, which must come without the connection's retries: a
    refusal for being over a cap would only come again."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert time.monotonic() - started < GIVE_UP_S / 2
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return error


def test_chunks_within_the_servers_cap_are_accepted_and_arrive_whole(
    server: RunningServer,
) -> None:
    site = Connection(f"127.0.0.1:{server.port}", "site-a", give_up_after_s=GIVE_UP_S)
    try:
        header = _init_header(site)
        # 1 MiB messages, over the cap: gRPC refuses the first before fedvox sees it
        too_big = _refused_at_once(lambda: site.submit(header, BLOB))
        assert "Received message larger than max (1048584 vs. " in str(too_big.details())

        reply = site.submit(header, BLOB, chunk_size=CAP_KB * 1024)
        assert reply.accepted and not reply.duplicate
        assert bytes(site.download(blake3_hex(BLOB), len(BLOB))) == BLOB
    finally:
        site.close()


def test_an_upload_over_the_servers_size_cap_is_refused_without_retries(
    server: RunningServer,
) -> None:
    site = Connection(f"127.0.0.1:{server.port}", "site-a", give_up_after_s=GIVE_UP_S)
    try:
        header = _init_header(site)
        header.size = 10**10
        refused = _refused_at_once(lambda: site.submit(header, BLOB, chunk_size=CAP_KB * 1024))
        assert re.fullmatch(
            r"declared size 10000000000 exceeds the cap of \d+ bytes", str(refused.details())
        )
    finally:
        site.close()


def test_a_chunk_size_below_one_byte_is_refused_before_anything_is_sent() -> None:
    site = Connection("127.0.0.1:1", "site-a", give_up_after_s=0)
    try:
        with pytest.raises(ValueError, match="chunk_size must be at least 1 byte, got 0"):
            site.submit(pb.SubmitHeader(site_id="site-a"), BLOB, chunk_size=0)
    finally:
        site.close()
