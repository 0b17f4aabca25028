"""Hypothesis fuzzing of a real server on loopback (in-process, real gRPC channel).

Over a thousand generated hostile messages and streams: random bytes as raw method payloads,
mutated encodings of a valid upload, wrong stream orders (chunk first, two headers, gaps,
duplicates), truncated and abandoned streams, hostile headers (wrong task, round, site, kind,
digest, huge or negative sizes), NaN/Inf tensors, wrong names/shapes/dtypes, malformed
safetensors, bad Download offsets and digests, malformed Register/Heartbeat/GetTask calls.

For each: no Submit is accepted, every refusal is a precise status (never UNKNOWN, the status of
an unhandled exception; INTERNAL only for bytes that gRPC cannot deserialize), and the round
state is untouched, except that a refusal of an upload's content (INVALID_ARGUMENT) may end
that site's part in the round, which the oracle checks and then undoes. After each group the
server still reports SERVING, answers GetStatus, serves the same global model, and round 1
still waits for both sites' results.

One server for the module: the fuzzing must leave it exactly as it found it.
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedvox.v1 import federation_pb2 as pb
from fedvox.wire.tensors import (
    StateDict,
    check_finite,
    check_schema,
    parse_safetensors,
    schema_of,
    to_safetensors,
)
from tests.helpers import (
    INITIAL,
    MAX_CHUNK,
    RPC_TIMEOUT,
    Federation,
    blake3_hex,
    download,
    federation,
)

pytestmark = pytest.mark.integration

DELTA_SLACK = 1 << 20  # the orchestrator's allowance over the global blob for a delta
PIECE = 48  # our streams cut GOOD into chunks this small, so order and gaps matter
INT64 = st.integers(-(2**63), 2**63 - 1)
DIGEST = re.compile(r"[0-9a-f]{64}")
SITE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# a refusal must name what went wrong; UNKNOWN would be an unhandled exception in the server
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.ALREADY_EXISTS,
}
UNDECODABLE = "Exception deserializing request!"
FED = "/fedvox.v1.FederationService/"
ADMIN = "/fedvox.v1.AdminService/"
UNARY_METHODS = [FED + "Register", FED + "GetTask", FED + "Heartbeat", ADMIN + "GetStatus"]
STREAM_METHODS = [FED + "Download", ADMIN + "DownloadModel"]
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# examples per group (hypothesis may stop a group early once its space is exhausted)
EXAMPLES = {
    "raw-unary": 140,
    "raw-stream": 60,
    "raw-submit": 100,
    "mutated-encoding": 150,
    "header": 200,
    "tensors": 200,
    "safetensors": 100,
    "order": 150,
    "abandoned": 20,
    "download": 100,
    "site-calls": 90,
}
SENT: Counter[str] = Counter()  # hostile messages and streams sent, per group


def fuzz(group: str) -> settings:
    return settings(FUZZ, max_examples=EXAMPLES[group])


def _good_delta() -> StateDict:
    return {k: np.full_like(v, 0.25) for k, v in INITIAL.items()}


GOOD = to_safetensors(_good_delta())  # a valid delta: only ever sent in hostile variants
SCHEMA = schema_of(INITIAL)


@dataclass(repr=False)  # hypothesis prints the arguments of a failing example
class Fuzzed:
    fed: Federation
    model: bytes  # the global model when fuzzing began
    raw_unary: dict[str, Callable[..., bytes]]
    raw_stream: dict[str, Callable[..., Iterator[bytes]]]
    raw_submit: Callable[..., bytes]

    def header(self, site: str = "site-a", blob: bytes = GOOD, **changes: Any) -> pb.SubmitHeader:
        return self.fed.header(site, blob, **changes)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    # long deadlines: the open round must not time out (and be re-planned) while we fuzz it
    with federation(
        tmp_path_factory.mktemp("fuzz-state"),
        round_timeout_s=3600,
        site_timeout_s=3600,
        poll_timeout_s=0.2,
    ) as fed:
        channel = fed.channel
        model = download(fed.fed, fed.tasks["site-a"].global_digest)
        yield Fuzzed(
            fed,
            model,
            {m: channel.unary_unary(m) for m in UNARY_METHODS},
            {m: channel.unary_stream(m) for m in STREAM_METHODS},
            channel.stream_unary(FED + "Submit"),
        )


# ---- oracles ----


def precise(error: grpc.RpcError, *, undecodable_ok: bool = False) -> grpc.StatusCode:
    """The status of a refusal, which must name what went wrong."""
    assert isinstance(error, grpc.Call)
    code, details = error.code(), error.details() or ""
    if undecodable_ok and code == grpc.StatusCode.INTERNAL and details == UNDECODABLE:
        return code  # gRPC's own answer to bytes that do not parse as the request message
    assert code in REFUSED, f"{code.name}: {details}"
    assert details, f"{code.name} without a message"
    return code


def refusal(call: Callable[[], object], *, undecodable_ok: bool = False) -> grpc.StatusCode:
    """Run `call`, which must fail with a precise status; returns the status."""
    try:
        reply = call()
    except grpc.RpcError as error:
        return precise(error, undecodable_ok=undecodable_ok)
    raise AssertionError(f"a hostile call was answered: {reply!r}")


def would_count(fed: Federation, stream: Sequence[pb.SubmitRequest]) -> bool:
    """Whether the server should accept `stream` (the same checks, done here independently).

    Hostile generators skip the rare example that is valid after all."""
    if not stream or stream[0].WhichOneof("part") != "header":
        return False
    h = stream[0].header
    task = fed.tasks.get(h.site_id)
    if task is None or (h.task_id, h.round, h.kind) != (task.task_id, 1, pb.PAYLOAD_KIND_DELTA):
        return False
    if h.num_examples < 0 or h.local_steps < 0:
        return False
    if not all(math.isfinite(v) for v in h.metrics.values()):
        return False
    if not DIGEST.fullmatch(h.digest) or not 0 <= h.size <= len(fed.init_blob) + DELTA_SLACK:
        return False
    data = bytearray()
    for message in stream[1:]:
        if message.WhichOneof("part") != "chunk":
            return False
        if message.chunk.offset != len(data) or len(message.chunk.data) > MAX_CHUNK:
            return False
        data += message.chunk.data
    if len(data) != h.size or blake3_hex(data) != h.digest:
        return False
    try:
        tensors = parse_safetensors(bytes(data))
        check_schema(tensors, SCHEMA)
        check_finite(tensors)
    except Exception:  # the server must refuse it too, with a precise status
        return False
    return True


def reopen_refused(f: Fuzzed) -> set[str]:
    """The sites whose task a content refusal ended, their tasks put back.

    Such a refusal ends the site's part in the round, and the round journal records it
    (test_bad_input checks what a site then sees, before and after a restart); the fuzzing
    goes on against the same open round, so it undoes both."""
    orchestrator = f.fed.running.orchestrator
    with orchestrator.cond:
        assert orchestrator.open is not None
        refused = set(orchestrator.open.refused)
        orchestrator.open.refused.clear()
        for site in refused:
            orchestrator.registry.sites[site].task_id = f.fed.tasks[site].task_id
            # must exist: the refusal is durable
            (orchestrator.open.journal.path / f"{site}.refused").unlink()
    return refused


def assert_untouched(f: Fuzzed, code: grpc.StatusCode | None = None) -> None:
    """The round state after a hostile message: nothing counted, nothing moved (but for a
    content refusal, which only an INVALID_ARGUMENT answer may be, to one site)."""
    refused = reopen_refused(f)
    assert len(refused) <= 1 and refused <= set(f.fed.tasks), refused
    if refused and code is not None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, refused)
    status = f.fed.status()
    assert (status.completed_round, status.current_round) == (0, 1)
    assert (status.current_results, status.current_expected) == (0, 2)
    assert status.global_digest == blake3_hex(f.fed.init_blob)
    for site in status.sites:
        assert 0.0 <= site.progress <= 1.0, (site.site_id, site.progress)
        if site.site_id in f.fed.tasks:
            assert site.current_task_id == f.fed.tasks[site.site_id].task_id
            assert dict(site.last_metrics) == {}


def assert_serving_and_unchanged(f: Fuzzed) -> None:
    """After a group: health, status, the model's bytes, the open tasks, no spilled update."""
    health = health_pb2_grpc.HealthStub(f.fed.channel)
    for service in ("", "fedvox.v1.FederationService", "fedvox.v1.AdminService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert_untouched(f)
    replies = f.fed.admin.DownloadModel(pb.DownloadModelRequest(), timeout=RPC_TIMEOUT)
    assert b"".join(r.data for r in replies) == f.model == f.fed.init_blob
    for site, task in f.fed.tasks.items():
        beat = f.fed.fed.Heartbeat(
            pb.HeartbeatRequest(site_id=site, task_id=task.task_id), timeout=RPC_TIMEOUT
        )
        assert not beat.abort  # the task is still open
    # the round journal holds the round's plan (round.json) and nothing else: no update spilled
    journal = Path(f.fed.running.orchestrator.store.root) / "journal"
    files = [p for p in journal.rglob("*") if p.is_file()] if journal.exists() else []
    assert [p.name for p in files if p.name != "round.json"] == [], files


def submit_refused(f: Fuzzed, stream: Sequence[pb.SubmitRequest]) -> grpc.StatusCode:
    assume(not would_count(f.fed, stream))
    code = refusal(lambda: f.fed.fed.Submit(iter(list(stream)), timeout=RPC_TIMEOUT))
    assert_untouched(f, code)
    return code


def pieces(blob: bytes, size: int = PIECE) -> list[pb.SubmitRequest]:
    return [
        pb.SubmitRequest(chunk=pb.SubmitChunk(offset=o, data=blob[o : o + size]))
        for o in range(0, len(blob), size)
    ]


# ---- random bytes as raw method payloads ----


@fuzz("raw-unary")
@given(method=st.sampled_from(UNARY_METHODS), payload=st.binary(max_size=600))
def test_random_bytes_to_unary_methods(fuzzed: Fuzzed, method: str, payload: bytes) -> None:
    # random bytes may decode to a harmless valid request (GetStatus, an unknown site's poll):
    # any answer is fine so long as it is a precise one and the round is untouched
    try:
        fuzzed.raw_unary[method](payload, timeout=RPC_TIMEOUT)
    except grpc.RpcError as error:
        precise(error, undecodable_ok=True)
    SENT["raw-unary"] += 1
    assert_untouched(fuzzed)


@fuzz("raw-stream")
@given(method=st.sampled_from(STREAM_METHODS), payload=st.binary(max_size=600))
def test_random_bytes_to_streaming_methods(fuzzed: Fuzzed, method: str, payload: bytes) -> None:
    try:
        replies = fuzzed.raw_stream[method](payload, timeout=RPC_TIMEOUT)
        received = b"".join(pb.DownloadResponse.FromString(r).data for r in replies)
    except grpc.RpcError as error:
        precise(error, undecodable_ok=True)
    else:  # only DownloadModel with a valid offset can answer: the model, as it is
        assert method.endswith("DownloadModel")
        offset = pb.DownloadModelRequest.FromString(payload).offset
        assert received == fuzzed.model[offset:]
    SENT["raw-stream"] += 1
    assert_untouched(fuzzed)


@fuzz("raw-submit")
@given(payloads=st.lists(st.binary(max_size=1200), max_size=8))
def test_random_bytes_as_submit_stream(fuzzed: Fuzzed, payloads: list[bytes]) -> None:
    decoded = []
    for payload in payloads:
        try:
            decoded.append(pb.SubmitRequest.FromString(payload))
        except DecodeError:
            break
    else:
        assume(not would_count(fuzzed.fed, decoded))
    refusal(lambda: fuzzed.raw_submit(iter(payloads), timeout=RPC_TIMEOUT), undecodable_ok=True)
    SENT["raw-submit"] += 1
    assert_untouched(fuzzed)


@fuzz("mutated-encoding")
@given(
    site=st.sampled_from(["site-a", "site-b"]),
    index=st.integers(0, 1 + len(GOOD) // PIECE),
    mutation=st.sampled_from(["truncate", "flip", "insert", "append"]),
    position=st.integers(0, 10_000),
    junk=st.binary(min_size=1, max_size=16),
)
def test_mutated_encodings_of_a_valid_upload(
    fuzzed: Fuzzed, site: str, index: int, mutation: str, position: int, junk: bytes
) -> None:
    """One message of an otherwise valid upload, corrupted on the wire."""
    stream = [pb.SubmitRequest(header=fuzzed.header(site)), *pieces(GOOD)]
    encoded = [m.SerializeToString() for m in stream]
    index %= len(encoded)
    raw = encoded[index]
    at = position % (len(raw) + 1)
    if mutation == "truncate":
        raw = raw[: min(at, len(raw) - 1)]
    elif mutation == "flip":
        at = min(at, len(raw) - 1)
        raw = raw[:at] + bytes([raw[at] ^ (junk[0] or 1)]) + raw[at + 1 :]
    elif mutation == "insert":
        raw = raw[:at] + junk + raw[at:]
    else:
        raw = raw + junk
    encoded[index] = raw
    try:
        decoded = [pb.SubmitRequest.FromString(m) for m in encoded]
    except DecodeError:
        pass
    else:  # e.g. junk that decodes as an unknown field leaves the upload valid: skip it
        assume(not would_count(fuzzed.fed, decoded))
    refusal(lambda: fuzzed.raw_submit(iter(encoded), timeout=RPC_TIMEOUT), undecodable_ok=True)
    SENT["mutated-encoding"] += 1
    assert_untouched(fuzzed)


# ---- hostile headers ----


def _not(value: object) -> Callable[[object], bool]:
    return lambda x: x != value


@st.composite
def hostile_headers(draw: st.DrawFn, f: Fuzzed) -> pb.SubmitHeader:
    """A correct header with one or more fields made wrong."""
    site = draw(st.sampled_from(["site-a", "site-b"]))
    header = f.header(site)
    other = "site-b" if site == "site-a" else "site-a"
    wrong: dict[str, st.SearchStrategy[Any]] = {
        "site_id": st.one_of(
            st.sampled_from([other, "site-zzz", "", site.upper(), site + " "]),
            st.text(max_size=70),
        ).filter(_not(site)),
        "task_id": st.one_of(
            st.sampled_from([f.fed.tasks[other].task_id, f.fed.init_task.task_id, "", "0" * 32]),
            st.text(max_size=40),
        ).filter(_not(header.task_id)),
        "round": INT64.filter(_not(1)),
        "kind": st.integers(-(2**31), 2**31 - 1).filter(_not(pb.PAYLOAD_KIND_DELTA)),
        "num_examples": st.integers(-(2**63), -1),
        "local_steps": st.integers(-(2**63), -1),
        "metrics": st.dictionaries(
            st.text(max_size=12),
            st.sampled_from([math.nan, math.inf, -math.inf]),
            min_size=1,
            max_size=3,
        ),
        "digest": st.one_of(
            st.binary(min_size=32, max_size=32).map(bytes.hex),
            st.text(max_size=70),
            st.just(header.digest.upper()),
            st.just(header.digest + "\n"),
        ).filter(_not(header.digest)),
        "size": st.one_of(
            INT64,
            st.integers(len(GOOD) - 5, len(GOOD) + 5),
            st.sampled_from([len(f.fed.init_blob) + DELTA_SLACK + 1, 2**40]),
        ).filter(_not(len(GOOD))),
    }
    fields = draw(st.sets(st.sampled_from(sorted(wrong)), min_size=1, max_size=4))
    for name in sorted(fields):
        value = draw(wrong[name])
        if name == "metrics":
            header.metrics.update(value)
        else:
            setattr(header, name, value)
    return header


@fuzz("header")
@given(data=st.data())
def test_hostile_headers(fuzzed: Fuzzed, data: st.DataObject) -> None:
    header = data.draw(hostile_headers(fuzzed))
    submit_refused(fuzzed, [pb.SubmitRequest(header=header), *pieces(GOOD)])
    SENT["header"] += 1


# ---- hostile tensors in a well-formed upload ----

DTYPES = ["<f8", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "?"]
NAMES = st.text(min_size=1, max_size=20)


@st.composite
def hostile_deltas(draw: st.DrawFn) -> StateDict:
    """A delta with NaN/Inf values, wrong shapes, dtypes or names (one or more of them)."""
    values = st.floats(-1e3, 1e3, width=32)
    delta: StateDict = {
        name: np.array(
            draw(st.lists(values, min_size=a.size, max_size=a.size)), np.float32
        ).reshape(a.shape)
        for name, a in INITIAL.items()
    }
    kinds = draw(
        st.sets(
            st.sampled_from(["nonfinite", "shape", "dtype", "drop", "extra", "rename"]),
            min_size=1,
            max_size=3,
        )
    )
    for kind in sorted(kinds):
        if not delta:
            break
        name = draw(st.sampled_from(sorted(delta)))
        if kind == "nonfinite" and delta[name].dtype.kind == "f" and delta[name].size:
            flat = delta[name].reshape(-1).copy()
            at = draw(st.integers(0, flat.size - 1))
            flat[at] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            delta[name] = flat.reshape(delta[name].shape)
        elif kind == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
            assume(name not in SCHEMA or shape != SCHEMA[name].shape)
            delta[name] = np.zeros(shape, np.float32)
        elif kind == "dtype":
            delta[name] = delta[name].astype(np.dtype(draw(st.sampled_from(DTYPES))))
        elif kind == "drop":
            del delta[name]
        elif kind == "extra":
            extra = draw(NAMES.filter(lambda n: n not in delta))
            delta[extra] = np.zeros(draw(st.integers(0, 3)), np.float32)
        else:
            new = draw(NAMES.filter(lambda n: n not in delta))
            delta[new] = delta.pop(name)
    return delta


@fuzz("tensors")
@given(
    delta=hostile_deltas(),
    site=st.sampled_from(["site-a", "site-b"]),
    num_examples=st.integers(0, 2**63 - 1),
)
def test_hostile_tensors(fuzzed: Fuzzed, delta: StateDict, site: str, num_examples: int) -> None:
    blob = to_safetensors(delta)
    header = fuzzed.header(site, blob, num_examples=num_examples)
    code = submit_refused(fuzzed, [pb.SubmitRequest(header=header), *pieces(blob)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    SENT["tensors"] += 1


# ---- malformed safetensors (correct digest and size) ----

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def malformed_blobs(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "entry", "json", "length", "trailing", "nesting"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "entry":  # one tensor entry with arbitrary dtype / shape / offsets
        entry = {
            "dtype": draw(st.sampled_from(["F32", "F64", "I64", "BOOL", "O", "F8", ""]) | NAMES),
            "shape": draw(st.lists(st.integers(-3, 2**70) | JSON_VALUES, max_size=70)),
            "data_offsets": draw(st.lists(st.integers(-(2**65), 2**65) | JSON_VALUES, max_size=3)),
        }
        for key in draw(st.sets(st.sampled_from(sorted(entry)), max_size=2)):
            del entry[key]
        header = {draw(st.sampled_from(["w", "b"]) | NAMES): entry}
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + draw(st.binary(max_size=64))
    if kind == "json":  # any JSON value as the header
        raw = json.dumps(draw(JSON_VALUES)).encode()
        return struct.pack("<Q", len(raw)) + raw + draw(st.binary(max_size=64))
    if kind == "length":  # a header length that lies
        length = draw(st.integers(0, 2**64 - 1))
        return struct.pack("<Q", length) + draw(st.binary(max_size=200))
    if kind == "trailing":  # a valid blob with bytes added or cut at the end
        cut = draw(st.integers(-len(GOOD) + 1, 64).filter(_not(0)))
        return GOOD[:cut] if cut < 0 else GOOD + draw(st.binary(min_size=cut, max_size=cut))
    depth = draw(st.integers(100, 20_000))  # deeply nested JSON
    raw = b"[" * depth + b"]" * depth
    return struct.pack("<Q", len(raw)) + raw


@fuzz("safetensors")
@given(blob=malformed_blobs())
def test_malformed_safetensors(fuzzed: Fuzzed, blob: bytes) -> None:
    header = fuzzed.header("site-a", blob)
    code = submit_refused(fuzzed, [pb.SubmitRequest(header=header), *pieces(blob, MAX_CHUNK)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    SENT["safetensors"] += 1


# ---- wrong orders, truncation, gaps, duplicates ----


@st.composite
def hostile_orders(draw: st.DrawFn, f: Fuzzed) -> list[pb.SubmitRequest]:
    header = pb.SubmitRequest(header=f.header(draw(st.sampled_from(["site-a", "site-b"]))))
    good = pieces(GOOD)
    parts: list[st.SearchStrategy[pb.SubmitRequest]] = [
        st.just(header),
        st.sampled_from(good),
        st.just(pb.SubmitRequest()),  # no part set
        st.builds(
            lambda offset, data: pb.SubmitRequest(chunk=pb.SubmitChunk(offset=offset, data=data)),
            st.one_of(INT64, st.integers(0, len(GOOD) + 2)),
            st.binary(max_size=MAX_CHUNK + 2),
        ),
    ]
    kind = draw(st.sampled_from(["random", "truncated", "drop", "duplicate", "swap", "reheader"]))
    stream = [header, *good]
    if kind == "random":
        stream = draw(st.lists(st.one_of(parts), max_size=12))
    elif kind == "truncated":
        stream = stream[: draw(st.integers(0, len(stream) - 1))]
    elif kind == "drop":
        del stream[draw(st.integers(0, len(stream) - 1))]
    elif kind == "duplicate":
        at = draw(st.integers(0, len(stream) - 1))
        stream.insert(draw(st.integers(0, len(stream))), stream[at])
    elif kind == "swap":
        i, j = draw(st.integers(0, len(stream) - 1)), draw(st.integers(0, len(stream) - 1))
        stream[i], stream[j] = stream[j], stream[i]
    else:  # a second header (or only headers) somewhere in the stream
        stream.insert(draw(st.integers(1, len(stream))), header)
    return stream


@fuzz("order")
@given(data=st.data())
def test_hostile_stream_orders(fuzzed: Fuzzed, data: st.DataObject) -> None:
    submit_refused(fuzzed, data.draw(hostile_orders(fuzzed)))
    SENT["order"] += 1


@fuzz("abandoned")
@given(
    sent=st.integers(0, len(pieces(GOOD)) - 1),
    site=st.sampled_from(["site-a", "site-b"]),
    how=st.sampled_from(["cancel", "deadline"]),
)
def test_abandoned_uploads(fuzzed: Fuzzed, sent: int, site: str, how: str) -> None:
    """A site that dies or stalls mid-upload, `sent` chunks in (at least one missing): its
    partial upload counts for nothing. (A site that dies after its last byte but before
    closing the stream may count: gRPC can end the server's request stream normally on a
    cancel, and the bytes are then whole and digest-checked.)"""
    stream = [pb.SubmitRequest(header=fuzzed.header(site)), *pieces(GOOD)][: sent + 1]
    reached, release = threading.Event(), threading.Event()

    def requests() -> Iterator[pb.SubmitRequest]:
        yield from stream
        reached.set()
        release.wait(RPC_TIMEOUT)

    timeout = 0.3 if how == "deadline" else RPC_TIMEOUT
    future = fuzzed.fed.fed.Submit.future(requests(), timeout=timeout)
    try:
        assert reached.wait(RPC_TIMEOUT)
        if how == "cancel":  # the site's process dies: its call is cancelled
            assert future.cancel()
            with pytest.raises(grpc.FutureCancelledError):
                future.result(timeout=RPC_TIMEOUT)
        else:  # the site stalls past its deadline
            with pytest.raises(grpc.RpcError) as info:
                future.result(timeout=RPC_TIMEOUT)
            assert isinstance(info.value, grpc.Call)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    SENT["abandoned"] += 1
    assert_untouched(fuzzed)


# ---- Download, Register, Heartbeat, GetTask ----


@fuzz("download")
@given(
    site=st.sampled_from(["site-a", "site-b", "site-zzz", ""]) | st.text(max_size=20),
    digest_kind=st.sampled_from(["global", "upper", "prefix", "other", "text", "empty"]),
    other=st.binary(min_size=32, max_size=32).map(bytes.hex),
    text=st.text(max_size=80),
    offset=st.one_of(INT64, st.integers(-3, 2048)),
    admin=st.booleans(),
)
def test_hostile_downloads(
    fuzzed: Fuzzed,
    site: str,
    digest_kind: str,
    other: str,
    text: str,
    offset: int,
    admin: bool,
) -> None:
    blob = fuzzed.model
    good = blake3_hex(blob)
    digest = {
        "global": good,
        "upper": good.upper(),
        "prefix": good[:-1],
        "other": other,
        "text": text,
        "empty": "",
    }[digest_kind]
    in_range = 0 <= offset <= len(blob)
    if admin:
        legit = in_range
        model = pb.DownloadModelRequest(offset=offset)
    else:
        legit = site in fuzzed.fed.tasks and digest == good and in_range
        request = pb.DownloadRequest(site_id=site, digest=digest, offset=offset)

    def call() -> Iterator[pb.DownloadResponse]:
        if admin:
            return fuzzed.fed.admin.DownloadModel(model, timeout=RPC_TIMEOUT)
        return fuzzed.fed.fed.Download(request, timeout=RPC_TIMEOUT)

    if legit:  # not hostile: it must be served, from that offset, unchanged
        assert b"".join(r.data for r in call()) == blob[offset:]
    else:
        code = refusal(lambda: list(call()))
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE)
        SENT["download"] += 1
    assert_untouched(fuzzed)


@fuzz("site-calls")
@given(
    call=st.sampled_from(["register", "heartbeat", "gettask"]),
    site=st.sampled_from(["site-a", "site-b"])
    | st.sampled_from(["site-zzz", "", "Site-A", "-x", "a" * 64])
    | st.text(max_size=70),
    number=INT64,
    progress=st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 2.0]) | st.floats(),
    task=st.sampled_from(["", "a" * 32]) | st.text(max_size=40),
    info=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3),
)
def test_hostile_site_calls(
    fuzzed: Fuzzed,
    call: str,
    site: str,
    number: int,
    progress: float,
    task: str,
    info: dict[str, str],
) -> None:
    stub = fuzzed.fed.fed
    if call == "register":
        # a well-formed new registration is legitimate; re-registering site-a/b would not be
        # fuzzing input validation
        assume(not (SITE_ID.fullmatch(site) and number >= 0) and site not in fuzzed.fed.tasks)
        request = pb.RegisterRequest(site_id=site, num_examples=number, info=info)
        code = refusal(lambda: stub.Register(request, timeout=RPC_TIMEOUT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    elif call == "heartbeat":
        beat = pb.HeartbeatRequest(site_id=site, task_id=task, progress=progress)
        if site in fuzzed.fed.tasks and math.isfinite(progress):  # odd but harmless: answered
            stub.Heartbeat(beat, timeout=RPC_TIMEOUT)
        elif site in fuzzed.fed.tasks:  # a progress of NaN or Inf means nothing
            code = refusal(lambda: stub.Heartbeat(beat, timeout=RPC_TIMEOUT))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        else:
            assert refusal(lambda: stub.Heartbeat(beat, timeout=RPC_TIMEOUT)) == (
                grpc.StatusCode.NOT_FOUND
            )
    else:
        assume(site not in fuzzed.fed.tasks)
        poll = pb.GetTaskRequest(site_id=site)
        assert refusal(lambda: stub.GetTask(poll, timeout=RPC_TIMEOUT)) == (
            grpc.StatusCode.NOT_FOUND
        )
    SENT["site-calls"] += 1
    assert_untouched(fuzzed)


# ---- the sum of it ----


def test_thousand_hostile_messages_left_the_server_unchanged(fuzzed: Fuzzed) -> None:
    assert_serving_and_unchanged(fuzzed)
    if set(SENT) != set(EXAMPLES):
        pytest.skip(f"only {sorted(SENT)} ran; the total needs the whole module")
    print(f"\nhostile messages and streams sent: {sum(SENT.values())} {dict(SENT)}")
    assert sum(SENT.values()) >= 1000, SENT
