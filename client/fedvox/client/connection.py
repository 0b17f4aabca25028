"""The site's only link to the server: one dial-out channel with retry and backoff."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from fedvox.tls import TlsFiles, open_channel
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.chunk_messages import (
    DOWNLOAD_METHODS,
    SUBMIT_METHOD,
    Chunk,
    decode_download,
    download_chunk,
    encode_submit,
)
from fedvox.wire.chunks import CHUNK_SIZE, BlobAssembler, iter_buffer_chunks

log = logging.getLogger(__name__)
T = TypeVar("T")

# transient failures worth retrying; anything else is the server refusing us
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
# RESOURCE_EXHAUSTED also says that a message or upload is over one of the server's caps
# (fedvox's own wording, then gRPC's): the same call would be refused again, so it is final
_OVER_A_CAP = ("exceeds the cap of", "larger than max")
_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]


def _retryable(code: grpc.StatusCode, details: str) -> bool:
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return not any(phrase in details for phrase in _OVER_A_CAP)
    return code in RETRYABLE


class ServerUnreachable(Exception):
    """The server stayed unreachable for longer than the connect timeout."""


class Connection:
    def __init__(
        self,
        address: str,
        site_id: str,
        *,
        give_up_after_s: float = 600.0,
        max_backoff_s: float = 30.0,
        tls: TlsFiles | None = None,
    ) -> None:
        """`tls`: this site's certificate for mutual TLS; None dials plaintext (--insecure)."""
        self.address = address
        self.site_id = site_id
        self.give_up_after_s = give_up_after_s
        self.max_backoff_s = max_backoff_s
        self.channel = open_channel(address, tls, _OPTIONS)
        # bytes per Submit message; Register lowers it to the server's cap where that is lower
        self.upload_chunk_size = CHUNK_SIZE
        self.stub = pb_grpc.FederationServiceStub(self.channel)
        # Submit's chunks encoded straight from the blob, Download's read as views into gRPC's
        # messages (fedvox.wire.chunk_messages)
        self.submit_call = self.channel.stream_unary(
            SUBMIT_METHOD,
            request_serializer=encode_submit,
            response_deserializer=pb.SubmitResponse.FromString,
        )
        self.download_call = self.channel.unary_stream(
            DOWNLOAD_METHODS[0],
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=decode_download,
        )

    def close(self) -> None:
        self.channel.close()

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transient failures with capped exponential backoff and jitter."""
        started, delay = time.monotonic(), 0.5
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code()
                if not _retryable(code, exc.details() or ""):
                    raise
                if time.monotonic() - started > self.give_up_after_s:
                    raise ServerUnreachable(
                        f"{what}: server {self.address} unreachable for "
                        f"{self.give_up_after_s:.0f}s ({code.name}: {exc.details()})"
                    ) from exc
                # details() tells a server that is down from one whose certificate we refuse
                log.info(
                    "connection: %s failed (%s: %s); retrying in %.1fs",
                    what,
                    code.name,
                    exc.details(),
                    delay,
                )
                time.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.max_backoff_s)

    def register(self, num_examples: int, info: dict[str, str]) -> pb.RegisterResponse:
        request = pb.RegisterRequest(site_id=self.site_id, num_examples=num_examples, info=info)
        reply = self.retrying("register", lambda: self.stub.Register(request, timeout=30))
        if reply.max_chunk_bytes:  # 0: a server that does not say
            self.upload_chunk_size = min(CHUNK_SIZE, reply.max_chunk_bytes)
        return reply

    def get_task(self, poll_timeout_s: float) -> pb.GetTaskResponse:
        request = pb.GetTaskRequest(site_id=self.site_id)
        return self.retrying(
            "get task", lambda: self.stub.GetTask(request, timeout=poll_timeout_s + 5)
        )

    def heartbeat(self, task_id: str, progress: float) -> bool:
        request = pb.HeartbeatRequest(site_id=self.site_id, task_id=task_id, progress=progress)
        return bool(self.stub.Heartbeat(request, timeout=10).abort)

    def download(self, digest: str, size: int) -> memoryview:
        """Fetch a blob into one preallocated buffer, resuming from the last byte on failure."""
        assembler = BlobAssembler(size, digest, max_chunk=8 * 1024 * 1024)

        def fetch() -> None:
            request = pb.DownloadRequest(
                site_id=self.site_id, digest=digest, offset=assembler.received
            )
            for message in self.download_call(request, timeout=600):
                chunk = download_chunk(message)
                assembler.add(chunk.offset, chunk.data)

        self.retrying(f"download {digest[:12]}", fetch)
        return assembler.finish()

    def submit(
        self, header: pb.SubmitHeader, blob: bytes, *, chunk_size: int | None = None
    ) -> pb.SubmitResponse:
        """Upload a result; safe to retry because the server accepts a task's result once.

        `chunk_size`: bytes per message; by default `upload_chunk_size`, 1 MiB or the server's
        `max_chunk_kb` if that is lower. Smaller chunks leave less in the server's gRPC buffers
        and cost throughput (docs/performance.md, section 1, "Chunk size")."""
        if chunk_size is None:
            chunk_size = self.upload_chunk_size
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size}")

        def messages() -> Iterator[pb.SubmitRequest | Chunk]:
            yield pb.SubmitRequest(header=header)
            for offset, data in iter_buffer_chunks(blob, chunk_size=chunk_size):
                yield Chunk(offset, data)

        return self.retrying(
            f"submit {header.task_id[:8]}", lambda: self.submit_call(messages(), timeout=600)
        )
