"""Thin gRPC adapters: proto in, domain calls on the orchestrator, proto out. No FL maths."""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import grpc

from fedvox.server.identity import require_admin, require_site
from fedvox.server.journal import StagedBlob
from fedvox.server.orchestrator import Orchestrator
from fedvox.server.tasks import Payload, ResultHeader, Task, TaskKind
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.chunk_messages import (
    DOWNLOAD_METHODS,
    SUBMIT_METHOD,
    Chunk,
    as_chunk,
    decode_submit,
    encode_download,
)
from fedvox.wire.chunks import ChunkChecker, iter_file_chunks
from fedvox.wire.errors import WireError, invalid
from fedvox.wire.tensors import StateDict, check_finite, parse_safetensors

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_SLOT_POLL_S = 0.5  # how often a queued upload checks that its client is still there

_KIND_TO_PB = {
    TaskKind.WAIT: pb.TASK_TYPE_WAIT,
    TaskKind.INIT: pb.TASK_TYPE_INIT,
    TaskKind.TRAIN: pb.TASK_TYPE_TRAIN,
    TaskKind.EVALUATE: pb.TASK_TYPE_EVALUATE,
    TaskKind.STOP: pb.TASK_TYPE_STOP,
}
_PAYLOAD_FROM_PB = {
    pb.PAYLOAD_KIND_NONE: Payload.NONE,
    pb.PAYLOAD_KIND_FULL: Payload.FULL,
    pb.PAYLOAD_KIND_DELTA: Payload.DELTA,
}


def _rpc_errors(method: F) -> F:
    """Turn a WireError into the matching gRPC status (also for streaming responses)."""

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except WireError as exc:
            log.warning("rpc %s refused: %s", method.__name__, exc)
            context.abort(exc.code, exc.message)

    return unary  # type: ignore[return-value]


def _stream_errors(method: F) -> F:
    @functools.wraps(method)
    def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except WireError as exc:
            log.warning("rpc %s refused: %s", method.__name__, exc)
            context.abort(exc.code, exc.message)

    return stream  # type: ignore[return-value]


def _chunks(path_chunks: Iterator[tuple[int, bytes]], total: int) -> Iterator[Chunk]:
    for offset, data in path_chunks:
        yield Chunk(offset, data, total)  # encoded by `ChunkMessages`


class ChunkMessages(grpc.ServerInterceptor):
    """Has Submit's messages decoded by `decode_submit`, a chunk arriving as a view into gRPC's
    message, and the Downloads' chunks encoded by `encode_download`, instead of protobuf and
    its copies (fedvox.wire.chunk_messages)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if method == SUBMIT_METHOD and handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                handler.stream_unary,
                request_deserializer=decode_submit,
                response_serializer=handler.response_serializer,
            )
        if method in DOWNLOAD_METHODS and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                handler.unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=encode_download,
            )
        return handler  # the other methods: protobuf alone


class UploadSlots:
    """At most `cap` Submits are received at once (0: no cap), served first come first.

    A queued stream reads nothing more, so its client is held back by gRPC's flow-control
    window instead of filling our memory: peak memory is about `cap` payloads (each upload's
    journal file, mapped while it is checked and folded) plus a stream window per queued
    upload, however many sites upload together. The most ever held is logged as it rises, so
    that an operator (and the tests) can see the cap hold."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held = 0
        self.high_water = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, context: grpc.ServicerContext, site: str) -> Iterator[bool]:
        """Hold a slot for the block; yields whether the upload had to queue."""
        queued = self._acquire(context, site)
        try:
            yield queued
        finally:
            with self._cond:
                self.held -= 1
                self._cond.notify_all()

    def _acquire(self, context: grpc.ServicerContext, site: str) -> bool:
        token = object()
        with self._cond:
            self._queue.append(token)
            try:
                queued = self._full(token)
                if queued:
                    log.info(
                        "uploads: %s queues for a slot (%d of %d held, %d waiting)",
                        site,
                        self.held,
                        self.cap,
                        len(self._queue) - 1,
                    )
                while self._full(token):
                    if not context.is_active():  # cancelled or past its deadline: give up
                        raise WireError(
                            grpc.StatusCode.CANCELLED, "the upload ended while it was queued"
                        )
                    self._cond.wait(_SLOT_POLL_S)
            finally:
                self._queue.remove(token)
                self._cond.notify_all()  # the next in line may now be at the head
            self.held += 1
            log.info(
                "uploads: %s takes a slot (%d of %s held)",
                site,
                self.held,
                self.cap or "no cap",
            )
            if self.held > self.high_water:
                self.high_water = self.held
                log.info(
                    "uploads: %d slot(s) held at once, the most so far (cap %s)",
                    self.held,
                    self.cap or "none",
                )
            return queued

    def _full(self, token: object) -> bool:
        return bool(self.cap) and (self._queue[0] is not token or self.held >= self.cap)


class FederationService(pb_grpc.FederationServiceServicer):
    def __init__(
        self,
        orchestrator: Orchestrator,
        heartbeat_interval_s: float,
        max_chunk_bytes: int,
        max_concurrent_uploads: int = 0,
    ) -> None:
        self.orch = orchestrator
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_chunk_bytes = max_chunk_bytes
        self.slots = UploadSlots(max_concurrent_uploads)

    @_rpc_errors
    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterResponse:
        require_site(context, request.site_id)
        self.orch.register(request.site_id, request.num_examples, dict(request.info))
        return pb.RegisterResponse(
            federation_id=self.orch.federation_id,
            heartbeat_interval_seconds=self.heartbeat_interval_s,
            max_chunk_bytes=self.max_chunk_bytes,
        )

    @_rpc_errors
    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:
        require_site(context, request.site_id)
        remaining = context.time_remaining()
        timeout = (remaining - 1.0) if remaining is not None else float("inf")
        task = self.orch.next_task(request.site_id, max(timeout, 0.0))
        if task is None:
            return pb.GetTaskResponse(task=pb.Task(type=pb.TASK_TYPE_WAIT), retry_after_seconds=0.5)
        return pb.GetTaskResponse(task=_task_to_pb(task))

    @_stream_errors
    def Download(  # type: ignore[override]  # Chunks, which ChunkMessages encodes
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[Chunk]:
        require_site(context, request.site_id)
        self.orch.touch(request.site_id)
        path = self.orch.blob_path(request.digest)
        yield from _chunks(iter_file_chunks(path, request.offset), path.stat().st_size)

    @_rpc_errors
    def Submit(
        self, request_iterator: Iterator[pb.SubmitRequest | Chunk], context: grpc.ServicerContext
    ) -> pb.SubmitResponse:
        first = next(request_iterator, None)
        if not isinstance(first, pb.SubmitRequest) or not first.HasField("header"):
            raise invalid("the first Submit message must be a header")
        header = _header_from_pb(first.header)
        require_site(context, header.site_id)
        replay = self._replay(header)  # also refuses a bad header before the upload queues
        if replay is not None:
            return replay
        # an evaluation result has no blob, so it needs no slot and never queues
        slot = (
            nullcontext(False)
            if header.payload is Payload.NONE
            else self.slots.hold(context, header.site_id)
        )
        with slot as queued:
            # checked again: the round may have closed, or a resend won, while this one queued
            replay = self._replay(header) if queued else None
            if replay is not None:
                return replay
            # written to the journal as it arrives, so that little is left to wait for
            staged = None if header.payload is Payload.NONE else self.orch.open_stage(header)
            try:
                tensors = self._receive(header, request_iterator, staged)
                counted = self.orch.accept(header, tensors, staged)
                del tensors  # views of the journal file's map: the slot is free once it is
            finally:
                if staged is not None:
                    staged.discard()  # a no-op once the result counted
        return pb.SubmitResponse(
            accepted=True,
            duplicate=not counted,
            message=f"result for task {header.task_id} (round {header.round}) accepted",
        )

    def _replay(self, header: ResultHeader) -> pb.SubmitResponse | None:
        if not self.orch.begin_submit(header):
            return None
        return pb.SubmitResponse(
            accepted=True, duplicate=True, message=f"task {header.task_id} was already accepted"
        )

    def _receive(
        self,
        header: ResultHeader,
        messages: Iterator[pb.SubmitRequest | Chunk],
        staged: StagedBlob | None,
    ) -> StateDict:
        if staged is None:  # an evaluation result (Payload.NONE) carries no blob
            if next(messages, None) is not None:
                raise invalid("an evaluation result carries no chunks")
            return {}
        checker = ChunkChecker(header.size, header.digest, max_chunk=self.max_chunk_bytes)
        for message in messages:
            chunk = as_chunk(message)
            if chunk is None:
                raise invalid("only chunks may follow the Submit header")
            checker.add(chunk.offset, chunk.data)
            try:
                staged.write(chunk.data)
            except OSError as exc:
                raise self.orch.journal_failed(header, exc) from None
        checker.finish()  # a transport failure here leaves the task open for a retry
        try:
            tensors = parse_safetensors(staged.mapped())
            check_finite(tensors)
        except WireError as exc:
            raise self.orch.refuse_content(header, exc) from None
        return tensors

    @_rpc_errors
    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatResponse:
        require_site(context, request.site_id)
        abort = self.orch.heartbeat(request.site_id, request.task_id, request.progress)
        return pb.HeartbeatResponse(abort=abort)


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    @_rpc_errors
    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        require_admin(context)
        return status_to_pb(self.orch.status())

    @_stream_errors
    def DownloadModel(  # type: ignore[override]  # Chunks, which ChunkMessages encodes
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[Chunk]:
        require_admin(context)
        path = self.orch.current_model()
        yield from _chunks(iter_file_chunks(path, request.offset), path.stat().st_size)


def _task_to_pb(task: Task) -> pb.Task:
    return pb.Task(
        task_id=task.task_id,
        type=_KIND_TO_PB[task.kind],
        round=task.round,
        global_digest=task.global_digest,
        global_size=task.global_size,
        config_json=task.config_json,
    )


def _header_from_pb(header: pb.SubmitHeader) -> ResultHeader:
    payload = _PAYLOAD_FROM_PB.get(header.kind)
    if payload is None:
        raise invalid(f"unknown payload kind {header.kind}")
    if header.size < 0:
        raise invalid(f"negative blob size {header.size}")
    return ResultHeader(
        site_id=header.site_id,
        task_id=header.task_id,
        round=header.round,
        payload=payload,
        num_examples=header.num_examples,
        digest=header.digest,
        size=header.size,
        local_steps=header.local_steps,
        metrics=dict(header.metrics),
    )


def status_to_pb(status: dict[str, Any]) -> pb.GetStatusResponse:
    sites = [
        pb.SiteStatus(
            site_id=s["site"].site_id,
            last_seen_unix=s["site"].last_seen,
            alive=s["alive"],
            num_examples=s["site"].num_examples,
            current_task_id=s["site"].task_id,
            progress=s["site"].progress,
            last_metrics=s["site"].last_metrics,
            info=s["site"].info,
        )
        for s in status["sites"]
    ]
    history = [
        pb.RoundSummary(
            round=h["round"],
            kind=h["kind"],
            sites=h["sites"],
            metrics=h["metrics"],
            global_digest=h.get("global_digest", ""),
            duration_seconds=h["duration_seconds"],
        )
        for h in status["history"]
    ]
    return pb.GetStatusResponse(
        federation_id=status["federation_id"],
        phase=status["phase"],
        completed_round=status["completed_round"],
        total_rounds=status["total_rounds"],
        current_round=status["current_round"],
        current_results=status["current_results"],
        current_expected=status["current_expected"],
        sites=sites,
        history=history,
        global_digest=status["global_digest"],
        strategy=status["strategy"],
    )
