"""A real gRPC server on loopback, driven by hand through the generated stubs: every malformed
or misdirected submission is refused with a precise status and counts for nothing; a valid
round then aggregates to the hand-computed FedAvg mean."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from fedvox.server.app import start
from fedvox.server.tasks import ResultHeader
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.tensors import StateDict, parse_safetensors, to_safetensors
from tests.helpers import (
    INITIAL,
    MAX_CHUNK,
    RPC_TIMEOUT,
    Federation,
    assert_state_equal,
    blake3_hex,
    chunks,
    download,
    f32,
    federation,
    messages,
    rpc_error,
    wait_for_task,
)

pytestmark = pytest.mark.integration

DELTA_SLACK = 1 << 20  # the orchestrator's allowance over the global blob for a delta
DELTA_A: StateDict = {"w": f32([[4.0, 0.0, -4.0], [2.0, 2.0, 2.0]]), "b": f32([1.0, 0.0, 0.0])}
DELTA_B: StateDict = {"w": f32([[0.0, 4.0, 0.0], [-2.0, 2.0, 6.0]]), "b": f32([1.0, 2.0, -4.0])}
# site-a trained on 1 example, site-b on 3: w + (1 * DELTA_A + 3 * DELTA_B) / 4, by hand
#   w: [[4, 12, -4], [-4, 8, 20]] / 4 = [[1, 3, -1], [-1, 2, 5]]
#   b: [4, 6, -12] / 4 = [1, 1.5, -3]
EXPECTED_ROUND_1: StateDict = {
    "w": f32([[2.0, 5.0, 2.0], [3.0, 7.0, 11.0]]),
    "b": f32([1.5, 1.0, -3.0]),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One server for the refusals: none of them may change its state."""
    with federation(tmp_path_factory.mktemp("state")) as fed:
        yield fed


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Federation]:
    with federation(tmp_path) as fed:
        yield fed


# ---- getting to round 1 ----


def test_init_then_train_task_for_the_uploaded_model(shared: Federation) -> None:
    assert shared.init_task.type == pb.TASK_TYPE_INIT
    assert (shared.init_task.round, shared.init_task.global_digest) == (0, "")
    assert sorted(shared.tasks) == ["site-a", "site-b"]
    assert shared.tasks["site-a"].task_id != shared.tasks["site-b"].task_id
    for task in shared.tasks.values():
        assert task.type == pb.TASK_TYPE_TRAIN
        assert task.round == 1
        assert task.global_digest == blake3_hex(shared.init_blob)
        assert task.global_size == len(shared.init_blob)
    status = shared.status()
    assert (status.completed_round, status.current_round, status.current_expected) == (0, 1, 2)
    assert status.global_digest == blake3_hex(shared.init_blob)


def test_download_returns_the_uploaded_bytes_and_resumes(shared: Federation) -> None:
    digest = shared.tasks["site-a"].global_digest
    assert download(shared.fed, digest) == shared.init_blob
    assert download(shared.fed, digest, offset=100) == shared.init_blob[100:]
    assert_state_equal(parse_safetensors(download(shared.fed, digest)), INITIAL)


@pytest.mark.parametrize(
    ("site", "digest", "offset", "code", "message"),
    [
        ("site-a", "0" * 64, 0, grpc.StatusCode.NOT_FOUND, f"no blob with digest '{'0' * 64}'"),
        ("site-zzz", None, 0, grpc.StatusCode.NOT_FOUND, "unknown site 'site-zzz'"),
        ("site-a", None, 10**6, grpc.StatusCode.OUT_OF_RANGE, "offset 1000000 outside blob of"),
    ],
)
def test_bad_download(
    shared: Federation,
    site: str,
    digest: str | None,
    offset: int,
    code: grpc.StatusCode,
    message: str,
) -> None:
    request = pb.DownloadRequest(
        site_id=site, digest=digest or blake3_hex(shared.init_blob), offset=offset
    )
    error = rpc_error(lambda: list(shared.fed.Download(request, timeout=RPC_TIMEOUT)))
    assert error.code() == code
    assert message in (error.details() or "")


def test_health_service_is_serving(shared: Federation) -> None:
    stub = health_pb2_grpc.HealthStub(shared.channel)
    for service in ("", "fedvox.v1.FederationService", "fedvox.v1.AdminService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_services(shared: Federation) -> None:
    database = ProtoReflectionDescriptorDatabase(shared.channel)
    services = set(database.get_services())
    assert {"fedvox.v1.FederationService", "fedvox.v1.AdminService"} <= services
    service = DescriptorPool(database).FindServiceByName("fedvox.v1.FederationService")
    assert {m.name for m in service.methods} == {
        "Register",
        "GetTask",
        "Download",
        "Submit",
        "Heartbeat",
    }


# ---- refusals ----

GOOD = to_safetensors(DELTA_A)
Case = Callable[[Federation], list[pb.SubmitRequest]]


def with_header(**changes: Any) -> Case:
    return lambda f: messages(f.header("site-a", GOOD, **changes), GOOD)


def with_tensors(tensors: StateDict) -> Case:
    blob = to_safetensors(tensors)
    return lambda f: messages(f.header("site-a", blob), blob)


def with_blob(blob: bytes, declared: int | None = None) -> Case:
    """A correct header for `blob` (optionally declaring another size) followed by its chunks."""
    size = len(blob) if declared is None else declared
    return lambda f: messages(f.header("site-a", blob, size=size), blob)


def wrong_task_site(f: Federation) -> list[pb.SubmitRequest]:
    return messages(f.header("site-a", GOOD, task_id=f.tasks["site-b"].task_id), GOOD)


def oversized_chunk(f: Federation) -> list[pb.SubmitRequest]:
    blob = bytes(MAX_CHUNK + 1)
    header = f.header("site-a", blob)
    return [pb.SubmitRequest(header=header), *chunks(blob, MAX_CHUNK + 1)]


def second_header(f: Federation) -> list[pb.SubmitRequest]:
    header = pb.SubmitRequest(header=f.header("site-a", GOOD))
    return [header, header, *chunks(GOOD)]


def chunk_first(f: Federation) -> list[pb.SubmitRequest]:
    return [*chunks(GOOD), pb.SubmitRequest(header=f.header("site-a", GOOD))]


def truncated(f: Federation) -> list[pb.SubmitRequest]:
    header = pb.SubmitRequest(header=f.header("site-a", GOOD))
    return [header, *chunks(GOOD[:-10])]


def out_of_order(f: Federation) -> list[pb.SubmitRequest]:
    return [
        pb.SubmitRequest(header=f.header("site-a", GOOD)),
        pb.SubmitRequest(chunk=pb.SubmitChunk(offset=8, data=GOOD[8:])),
    ]


INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
REFUSALS = [
    pytest.param(
        with_header(site_id="site-zzz"),
        grpc.StatusCode.NOT_FOUND,
        "unknown site 'site-zzz': call Register first",
        id="unknown-site",
    ),
    pytest.param(
        with_header(task_id="no-such-task"),
        grpc.StatusCode.NOT_FOUND,
        "unknown task 'no-such-task'",
        id="unknown-task",
    ),
    pytest.param(
        wrong_task_site,
        grpc.StatusCode.PERMISSION_DENIED,
        "was assigned to another site, not 'site-a'",
        id="task-of-another-site",
    ),
    pytest.param(
        with_header(round=2),
        grpc.StatusCode.FAILED_PRECONDITION,
        "belongs to round 1, not 2",
        id="wrong-round",
    ),
    pytest.param(
        with_header(kind=pb.PAYLOAD_KIND_FULL),
        INVALID,
        "a train task must upload payload delta, not full",
        id="full-instead-of-delta",
    ),
    pytest.param(
        with_header(kind=pb.PAYLOAD_KIND_NONE),
        INVALID,
        "a train task must upload payload delta, not none",
        id="none-instead-of-delta",
    ),
    pytest.param(
        with_header(kind=pb.PAYLOAD_KIND_UNSPECIFIED),
        INVALID,
        "unknown payload kind 0",
        id="unspecified-kind",
    ),
    pytest.param(
        with_header(digest=blake3_hex(b"something else")),
        grpc.StatusCode.DATA_LOSS,
        f"digest mismatch: declared {blake3_hex(b'something else')}, got {blake3_hex(GOOD)}",
        id="digest-mismatch",
    ),
    pytest.param(
        with_header(digest=blake3_hex(GOOD).upper()),
        INVALID,
        "is not a lower-case hex BLAKE3 digest",
        id="digest-not-hex",
    ),
    pytest.param(
        oversized_chunk,
        TOO_BIG,
        f"chunk of {MAX_CHUNK + 1} bytes exceeds the cap of {MAX_CHUNK}",
        id="oversized-chunk",
    ),
    pytest.param(
        chunk_first, INVALID, "the first Submit message must be a header", id="chunk-before-header"
    ),
    pytest.param(
        second_header, INVALID, "only chunks may follow the Submit header", id="second-header"
    ),
    pytest.param(
        lambda f: [], INVALID, "the first Submit message must be a header", id="empty-stream"
    ),
    pytest.param(
        truncated,
        INVALID,
        rf"stream ended after {len(GOOD) - 10} of {len(GOOD)} bytes \(truncated\)",
        id="truncated-stream",
    ),
    pytest.param(
        with_blob(GOOD, declared=len(GOOD) + 100),
        INVALID,
        rf"stream ended after {len(GOOD)} of {len(GOOD) + 100} bytes",
        id="declared-size-larger-than-sent",
    ),
    pytest.param(
        with_blob(GOOD, declared=len(GOOD) - 1),
        INVALID,
        rf"chunk ends at byte {len(GOOD)}, past the declared size {len(GOOD) - 1}",
        id="chunk-past-declared-size",
    ),
    pytest.param(out_of_order, INVALID, "chunk at offset 8, expected 0", id="out-of-order-chunk"),
]

# refusals of what the site computed: the same update would be refused again, so the round
# stops waiting for the site (its task ends) and it takes part again from the next round
CONTENT_REFUSALS = [
    pytest.param(
        with_header(num_examples=-1),
        "num_examples and local_steps must be >= 0",
        id="negative-examples",
    ),
    pytest.param(
        with_header(metrics={"loss": float("nan")}),
        "metric 'loss' is not finite",
        id="non-finite-metric",
    ),
    pytest.param(
        with_tensors({**DELTA_A, "w": f32(np.zeros((3, 2)))}),
        r"tensor 'w': shape \(3, 2\) != expected \(2, 3\)",
        id="shape-mismatch",
    ),
    pytest.param(
        with_tensors({"w": DELTA_A["w"], "bias": DELTA_A["b"]}),
        "missing tensor 'b'",
        id="missing-name",
    ),
    pytest.param(
        with_tensors({**DELTA_A, "extra": f32([1.0])}),
        "unexpected tensor 'extra'",
        id="unexpected-name",
    ),
    pytest.param(
        with_tensors({**DELTA_A, "w": DELTA_A["w"].astype(np.float64)}),
        "tensor 'w': dtype F64 != expected F32",
        id="dtype-mismatch",
    ),
    pytest.param(
        with_tensors({**DELTA_A, "w": f32([[np.nan, 0, 0], [0, 0, 0]])}),
        "tensor 'w' holds NaN or Inf",
        id="nan",
    ),
    pytest.param(
        with_tensors({**DELTA_A, "b": f32([0, -np.inf, 0])}),
        "tensor 'b' holds NaN or Inf",
        id="inf",
    ),
    pytest.param(
        with_blob(b"this is not a safetensors blob"),
        "safetensors header length .* exceeds the blob",
        id="not-safetensors",
    ),
]


@pytest.mark.parametrize(("case", "code", "message"), REFUSALS)
def test_refused_submission_counts_for_nothing(
    shared: Federation, case: Case, code: grpc.StatusCode, message: str
) -> None:
    error = rpc_error(lambda: shared.submit(case(shared)))
    assert error.code() == code, error.details()
    assert re.search(message, error.details() or ""), error.details()
    status = shared.status()  # the server still answers, and nothing was counted
    assert (status.current_round, status.current_results, status.completed_round) == (1, 0, 0)
    assert {s.site_id: s.current_task_id for s in status.sites} == {
        site: task.task_id for site, task in shared.tasks.items()
    }
    assert {s.site_id: dict(s.last_metrics) for s in status.sites} == {"site-a": {}, "site-b": {}}
    beat = shared.fed.Heartbeat(
        pb.HeartbeatRequest(site_id="site-a", task_id=shared.tasks["site-a"].task_id),
        timeout=RPC_TIMEOUT,
    )
    assert not beat.abort  # the task is still open


def test_a_content_refusal_survives_a_server_restart(tmp_path: Path) -> None:
    with federation(tmp_path) as first:
        task_a = first.tasks["site-a"].task_id
        refused = with_header(metrics={"loss": float("nan")})(first)
        assert rpc_error(lambda: first.submit(refused)).code() == INVALID
        config = first.running.orchestrator.config
    running = start(config)  # the same state folder: round 1 is reopened from its journal
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        fed = pb_grpc.FederationServiceStub(channel)
        for site, examples in (("site-a", 10), ("site-b", 30)):
            fed.Register(pb.RegisterRequest(site_id=site, num_examples=examples), timeout=5)
        assert wait_for_task(fed, "site-b").task_id == first.tasks["site-b"].task_id
        poll = fed.GetTask(pb.GetTaskRequest(site_id="site-a"), timeout=5)
        assert poll.task.type == pb.TASK_TYPE_WAIT  # not its refused task, handed out again
        blob = to_safetensors(DELTA_A)
        again = rpc_error(
            lambda: fed.Submit(iter(messages(first.header("site-a", blob), blob)), timeout=5)
        )
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"task {task_a} of round 1 ended when its update was refused" in (
            again.details() or ""
        )
    finally:
        channel.close()
        running.stop(0)


@pytest.mark.parametrize(("case", "message"), CONTENT_REFUSALS)
def test_content_refusal_ends_the_sites_part_in_the_round(
    fresh: Federation, case: Case, message: str
) -> None:
    error = rpc_error(lambda: fresh.submit(case(fresh)))
    assert error.code() == INVALID, error.details()
    assert re.search(message, error.details() or ""), error.details()
    assert "the round no longer waits for this site" in (error.details() or "")
    status = fresh.status()  # nothing counted, and site-a no longer holds a task
    assert (status.current_round, status.current_results, status.completed_round) == (1, 0, 0)
    assert {s.site_id: s.current_task_id for s in status.sites} == {
        "site-a": "",
        "site-b": fresh.tasks["site-b"].task_id,
    }
    task_a = fresh.tasks["site-a"].task_id
    beat = fresh.fed.Heartbeat(
        pb.HeartbeatRequest(site_id="site-a", task_id=task_a), timeout=RPC_TIMEOUT
    )
    assert beat.abort  # a site still training on it may stop
    poll = fresh.fed.GetTask(pb.GetTaskRequest(site_id="site-a"), timeout=2)
    assert poll.task.type == pb.TASK_TYPE_WAIT
    again = rpc_error(lambda: fresh.submit_delta("site-a", DELTA_A, num_examples=1))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"task {task_a} of round 1 ended when its update was refused" in (again.details() or "")


def test_round_closes_without_the_refused_site_which_rejoins_the_next(fresh: Federation) -> None:
    """round_timeout_s is 30 s here: the round must close as soon as site-b is in."""
    nan = {**DELTA_A, "w": f32([[np.nan, 0, 0], [0, 0, 0]])}
    assert rpc_error(lambda: fresh.submit_delta("site-a", nan)).code() == INVALID
    began = time.monotonic()
    assert fresh.submit_delta("site-b", DELTA_B, num_examples=3).accepted
    while (status := fresh.status()).completed_round < 1:
        assert time.monotonic() - began < 10, "round 1 waited for the refused site"
        time.sleep(0.05)
    summary = status.history[-1]
    assert (summary.round, list(summary.sites)) == (1, ["site-b"])
    history = json.loads((fresh.running.orchestrator.store.root / "history.json").read_text())
    assert history[-1]["refused"] == {"site-a": "tensor 'w' holds NaN or Inf"}
    # FedAvg of site-b alone: the initial model + DELTA_B
    model = parse_safetensors(download(fresh.fed, status.global_digest))
    assert_state_equal(model, {k: np.add(INITIAL[k], DELTA_B[k]) for k in INITIAL})
    task = wait_for_task(fresh.fed, "site-a")
    assert (task.type, task.round) == (pb.TASK_TYPE_TRAIN, 2)
    fresh.tasks["site-a"] = task
    assert fresh.submit_delta("site-a", DELTA_A, num_examples=1).accepted


def test_declared_size_cap_is_the_global_size_plus_slack(shared: Federation) -> None:
    cap = len(shared.init_blob) + DELTA_SLACK
    over = rpc_error(
        lambda: shared.submit(
            [pb.SubmitRequest(header=shared.header("site-a", GOOD, size=cap + 1))]
        )
    )
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.details() == f"declared size {cap + 1} exceeds the cap of {cap} bytes"
    # exactly the cap passes the header check and fails only for the missing bytes
    at_cap = rpc_error(
        lambda: shared.submit(messages(shared.header("site-a", GOOD, size=cap), GOOD))
    )
    assert at_cap.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"stream ended after {len(GOOD)} of {cap} bytes" in (at_cap.details() or "")
    assert shared.status().current_results == 0


def test_unregistered_or_malformed_site(shared: Federation) -> None:
    calls: list[Callable[[], object]] = [
        lambda: shared.fed.GetTask(pb.GetTaskRequest(site_id="site-zzz"), timeout=RPC_TIMEOUT),
        lambda: shared.fed.Heartbeat(pb.HeartbeatRequest(site_id="site-zzz"), timeout=RPC_TIMEOUT),
    ]
    for call in calls:
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "unknown site 'site-zzz': call Register first" in (error.details() or "")
    error = rpc_error(
        lambda: shared.fed.Register(pb.RegisterRequest(site_id="Site/A"), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "site id 'Site/A' must match" in (error.details() or "")
    assert sorted(s.site_id for s in shared.status().sites) == ["site-a", "site-b"]


# ---- a valid round ----


def test_valid_round_replay_conflict_and_aggregation(fresh: Federation) -> None:
    reply = fresh.submit_delta("site-a", DELTA_A, num_examples=1, metrics={"loss": 0.5})
    assert (reply.accepted, reply.duplicate) == (True, False)
    assert fresh.status().current_results == 1

    replay = fresh.submit_delta("site-a", DELTA_A, num_examples=1, metrics={"loss": 0.5})
    assert (replay.accepted, replay.duplicate) == (True, True)
    error = rpc_error(lambda: fresh.submit_delta("site-a", DELTA_B, num_examples=1))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already has a different result" in (error.details() or "")
    assert fresh.status().current_results == 1

    reply = fresh.submit_delta("site-b", DELTA_B, num_examples=3, metrics={"loss": 1.5})
    assert (reply.accepted, reply.duplicate) == (True, False)

    deadline = time.monotonic() + 15
    while (status := fresh.status()).completed_round < 1:
        assert time.monotonic() < deadline, "round 1 did not complete within 15 s"
        time.sleep(0.05)
    assert status.completed_round == 1
    summary = status.history[-1]
    assert (summary.round, summary.kind, list(summary.sites)) == (1, "train", ["site-a", "site-b"])
    assert dict(summary.metrics) == {"site-a/loss": 0.5, "site-b/loss": 1.5, "mean/loss": 1.0}

    replies = list(fresh.admin.DownloadModel(pb.DownloadModelRequest(), timeout=RPC_TIMEOUT))
    model = b"".join(r.data for r in replies)
    assert blake3_hex(model) == status.global_digest == summary.global_digest
    assert_state_equal(parse_safetensors(model), EXPECTED_ROUND_1)
    tail = list(fresh.admin.DownloadModel(pb.DownloadModelRequest(offset=50), timeout=RPC_TIMEOUT))
    assert b"".join(r.data for r in tail) == model[50:]

    # an exact replay after the round closed is still an idempotent duplicate (a site whose
    # reply was lost retries safely), a different result is refused, and nothing changes
    replay = fresh.submit_delta("site-a", DELTA_A, num_examples=1)
    assert (replay.accepted, replay.duplicate) == (True, True)
    late = rpc_error(lambda: fresh.submit_delta("site-a", DELTA_B, num_examples=1))
    assert late.code() == grpc.StatusCode.ALREADY_EXISTS
    assert fresh.status().global_digest == blake3_hex(model)
    task = wait_for_task(fresh.fed, "site-a")
    assert (task.type, task.round, task.global_digest) == (pb.TASK_TYPE_TRAIN, 2, blake3_hex(model))


def test_concurrent_different_result_is_already_exists(
    fresh: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: queue.Queue[str] = queue.Queue()
    original = fresh.running.orchestrator.begin_submit

    def spy(header: ResultHeader) -> bool:
        replay = original(header)
        checked.put(header.digest)
        return replay

    monkeypatch.setattr(fresh.running.orchestrator, "begin_submit", spy)
    release = {"a": threading.Event(), "b": threading.Event()}

    def stream(key: str, delta: StateDict) -> Iterator[pb.SubmitRequest]:
        blob = to_safetensors(delta)
        header, *rest = messages(fresh.header("site-a", blob), blob)
        yield header
        release[key].wait(RPC_TIMEOUT)
        yield from rest

    try:
        first = fresh.fed.Submit.future(stream("a", DELTA_A), timeout=RPC_TIMEOUT)
        assert checked.get(timeout=RPC_TIMEOUT) == blake3_hex(to_safetensors(DELTA_A))
        second = fresh.fed.Submit.future(stream("b", DELTA_B), timeout=RPC_TIMEOUT)
        assert checked.get(timeout=RPC_TIMEOUT) == blake3_hex(to_safetensors(DELTA_B))
        release["a"].set()
        assert first.result().accepted
        release["b"].set()
        error = rpc_error(second.result)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        for event in release.values():
            event.set()
    # whatever happened, only site-a's first blob may have been counted
    assert fresh.status().current_results == 1
