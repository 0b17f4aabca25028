"""A site's upload chunks against a real server's `max_chunk_kb`: the server says its cap at
Register and the site sends chunks no larger; a chunk over the cap, or a blob over the size
cap, is refused at once, without the connection's retries."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedvox.client.connection import Connection
from fedvox.server.app import start
from fedvox.v1 import federation_pb2 as pb
from fedvox.wire.chunks import CHUNK_SIZE
from fedvox.wire.tensors import to_safetensors
from tests.helpers import blake3_hex, server_config, wait_for_task

pytestmark = pytest.mark.integration

GIVE_UP_S = 30.0  # a retried refusal would take this long
# 1.2 MB: more than one 1 MiB chunk
BLOB = to_safetensors({"w": np.arange(300_000, dtype=np.float32)})


@contextmanager
def registered_site(state_dir: Path, max_chunk_kb: int) -> Iterator[Connection]:
    """site-a, registered with a fresh in-process server of that cap, in round 0 (INIT)."""
    running = start(
        server_config(
            host="127.0.0.1",
            port=0,
            state_dir=str(state_dir),
            min_sites=1,
            rounds=1,
            evaluate=False,
            poll_timeout_s=1,
            max_chunk_kb=max_chunk_kb,
        )
    )
    site = Connection(f"127.0.0.1:{running.port}", "site-a", give_up_after_s=GIVE_UP_S)
    try:
        site.register(1, {})
        yield site
    finally:
        site.close()
        running.stop(0)


def init_header(site: Connection, size: int = len(BLOB)) -> pb.SubmitHeader:
    task = wait_for_task(site.stub, site.site_id)
    assert task.type == pb.TASK_TYPE_INIT
    return pb.SubmitHeader(
        site_id=site.site_id,
        task_id=task.task_id,
        round=task.round,
        kind=pb.PAYLOAD_KIND_FULL,
        num_examples=1,
        digest=blake3_hex(BLOB),
        size=size,
    )


def refused_at_once(call: Callable[[], object]) -> grpc.Call:
    """The RESOURCE_EXHAUSTED error `call` raises, which must come without the connection's
    retries: a refusal for being over a cap would only come again."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert time.monotonic() - started < GIVE_UP_S / 2
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return error


@pytest.mark.parametrize(("cap_kb", "chunk"), [(64, 64 * 1024), (4096, CHUNK_SIZE)])
def test_a_site_uploads_in_chunks_no_larger_than_the_servers_cap(
    tmp_path: Path, cap_kb: int, chunk: int
) -> None:
    with registered_site(tmp_path, cap_kb) as site:
        assert site.upload_chunk_size == chunk
        reply = site.submit(init_header(site), BLOB)
        assert reply.accepted and not reply.duplicate
        assert bytes(site.download(blake3_hex(BLOB), len(BLOB))) == BLOB


def test_a_chunk_over_the_cap_is_refused_without_retries(tmp_path: Path) -> None:
    with registered_site(tmp_path, 64) as site:
        header = init_header(site)
        # gRPC itself refuses a message more than 64 KiB over the cap, before fedvox sees it
        too_big = refused_at_once(lambda: site.submit(header, BLOB, chunk_size=CHUNK_SIZE))
        assert "Received message larger than max (1048584 vs. " in str(too_big.details())
        # and fedvox one over the cap but within gRPC's allowance
        over = refused_at_once(lambda: site.submit(header, BLOB, chunk_size=64 * 1024 + 1))
        assert over.details() == f"chunk of {64 * 1024 + 1} bytes exceeds the cap of {64 * 1024}"
        assert site.submit(header, BLOB).accepted  # the task stayed open


def test_an_upload_over_the_servers_size_cap_is_refused_without_retries(tmp_path: Path) -> None:
    with registered_site(tmp_path, 64) as site:
        header = init_header(site, size=10**10)
        refused = refused_at_once(lambda: site.submit(header, BLOB))
        assert re.fullmatch(
            r"declared size 10000000000 exceeds the cap of \d+ bytes", str(refused.details())
        )


def test_a_chunk_size_below_one_byte_is_refused_before_anything_is_sent() -> None:
    site = Connection("127.0.0.1:1", "site-a", give_up_after_s=0)
    try:
        with pytest.raises(ValueError, match="chunk_size must be at least 1 byte, got 0"):
            site.submit(pb.SubmitHeader(site_id="site-a"), BLOB, chunk_size=0)
    finally:
        site.close()
