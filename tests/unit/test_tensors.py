"""Tests of the safetensors reader/writer and the tensor checks (fedvox.wire.tensors)."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import grpc
import numpy as np
import pytest
import safetensors.numpy as st

from fedvox.wire.digest import digest_hex
from fedvox.wire.tensors import (
    CACHED_HEADER_BYTES,
    StateDict,
    TensorSpec,
    _cached_layout,
    check_finite,
    check_schema,
    parse_safetensors,
    schema_from_json,
    schema_of,
    schema_to_json,
    to_safetensors,
    write_safetensors,
)
from tests.helpers import assert_state_equal, blake3_hex, f32, raises_wire

BAD = grpc.StatusCode.INVALID_ARGUMENT


def sample() -> StateDict:
    """One tensor of each dtype the federation ships, with awkward values."""
    return {
        "f32": f32([[1.5, -2.25, 3.0e-8], [np.finfo(np.float32).max, -0.0, 7.0]]),
        "f64": np.array([np.pi, -1e300, 5e-324], dtype=np.float64),
        "i64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], dtype=np.int64),
        "u8": np.array([[0, 51, 102], [153, 204, 255]], dtype=np.uint8),
        "bool": np.array([[True, False], [False, True]]),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def raw_blob(meta: object, data: bytes) -> bytes:
    header = json.dumps(meta).encode()
    return struct.pack("<Q", len(header)) + header + data


# ---- writing and reading ----


def test_bytes_match_hand_written_layout() -> None:
    tensors = {"b": np.array([1, 2], dtype=np.uint8), "a": f32([1.0])}
    header = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}'
    )
    assert len(header) == 106
    expected = struct.pack("<Q", 112) + header + b" " * 6 + b"\x00\x00\x80\x3f" + b"\x01\x02"
    assert to_safetensors(tensors) == expected


def test_file_round_trip_preserves_everything(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    digest = write_safetensors(sample(), path)
    data = path.read_bytes()
    assert digest == blake3_hex(data)
    assert not (tmp_path / "model.safetensors.tmp").exists()
    assert_state_equal(parse_safetensors(data), sample())
    assert (8 + struct.unpack("<Q", data[:8])[0]) % 8 == 0  # data section is 8-byte aligned


def test_bytes_round_trip_matches_the_file(tmp_path: Path) -> None:
    blob = to_safetensors(sample())
    assert_state_equal(parse_safetensors(blob), sample())
    assert_state_equal(parse_safetensors(bytearray(blob)), sample())
    assert_state_equal(parse_safetensors(memoryview(blob)), sample())
    digest = write_safetensors(sample(), tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == blob
    assert digest_hex(blob) == digest


def test_non_contiguous_input_is_written_in_logical_order() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    parsed = parse_safetensors(to_safetensors({"t": base.T, "s": base[:, ::2]}))
    np.testing.assert_array_equal(parsed["t"], [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]])
    np.testing.assert_array_equal(parsed["s"], [[0, 2], [4, 6], [8, 10]])


def test_empty_state_dict_round_trips(tmp_path: Path) -> None:
    assert parse_safetensors(to_safetensors({})) == {}
    write_safetensors({}, tmp_path / "e.safetensors")
    assert parse_safetensors((tmp_path / "e.safetensors").read_bytes()) == {}


def test_output_loads_with_official_safetensors() -> None:
    assert_state_equal(st.load(to_safetensors(sample())), sample())


def test_official_writer_output_parses() -> None:
    assert_state_equal(parse_safetensors(st.save(sample())), sample())
    with_metadata = st.save(sample(), metadata={"format": "np", "note": "x"})
    assert_state_equal(parse_safetensors(with_metadata), sample())


def test_official_scalar_parses_as_scalar() -> None:
    parsed = parse_safetensors(st.save({"step": np.array(7, dtype=np.int64)}))
    assert parsed["step"].shape == ()
    assert int(parsed["step"]) == 7


def test_scalar_keeps_its_shape() -> None:
    blob = to_safetensors({"step": np.array(7, dtype=np.int64)})
    assert st.load(blob)["step"].shape == ()


def test_big_endian_input_keeps_its_values() -> None:
    parsed = parse_safetensors(to_safetensors({"x": np.array([1.0, 2.0], dtype=">f4")}))
    np.testing.assert_array_equal(parsed["x"], [1.0, 2.0])


def test_unsupported_dtype_is_refused_on_write() -> None:
    with raises_wire(BAD, "unsupported dtype complex64"):
        to_safetensors({"c": np.zeros(2, dtype=np.complex64)})


# ---- malformed blobs ----


def test_rejects_blob_shorter_than_length_prefix() -> None:
    with raises_wire(BAD, "shorter than the 8-byte"):
        parse_safetensors(b"\x10\x00\x00")


def test_rejects_truncated_data() -> None:
    blob = to_safetensors({"a": f32([1.0, 2.0]), "b": f32([3.0])})
    with raises_wire(BAD, r"tensor 'b': byte range \[8, 12\) is inconsistent"):
        parse_safetensors(blob[:-2])


def test_rejects_header_length_beyond_blob() -> None:
    with raises_wire(BAD, "header length 1000 exceeds the blob"):
        parse_safetensors(struct.pack("<Q", 1000) + b"{}")


@pytest.mark.parametrize(
    "header",
    [b"{not json", b"\xff\xfe\x00\x01", b"[" * 100_000 + b"]" * 100_000, b"1" * 5000],
    ids=["syntax", "utf8", "deep-nesting", "huge-int"],
)
def test_rejects_non_json_header(header: bytes) -> None:
    with raises_wire(BAD, "header is not JSON"):
        parse_safetensors(struct.pack("<Q", len(header)) + header)


def test_rejects_json_that_is_not_an_object() -> None:
    with raises_wire(BAD, "not a JSON object"):
        parse_safetensors(raw_blob([1, 2], b""))


@pytest.mark.parametrize("dtype", ["C64", "O", None])
def test_rejects_unknown_dtype(dtype: str | None) -> None:
    meta = {"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 8]}}
    with raises_wire(BAD, f"tensor 'w': unsupported dtype {dtype!r}"):
        parse_safetensors(raw_blob(meta, bytes(8)))


def test_rejects_overlapping_offsets() -> None:
    meta = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with raises_wire(BAD, r"tensor 'b': byte range \[4, 12\) is inconsistent"):
        parse_safetensors(raw_blob(meta, bytes(12)))


def test_rejects_gap_between_tensors() -> None:
    meta = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    with raises_wire(BAD, r"tensor 'b': byte range \[8, 12\) is inconsistent"):
        parse_safetensors(raw_blob(meta, bytes(12)))


def test_rejects_range_that_disagrees_with_shape() -> None:
    meta = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    with raises_wire(BAD, r"tensor 'a': byte range \[0, 8\) is inconsistent"):
        parse_safetensors(raw_blob(meta, bytes(8)))


def test_rejects_trailing_bytes() -> None:
    with raises_wire(BAD, "3 trailing bytes after the last tensor"):
        parse_safetensors(to_safetensors({"a": f32([1.0])}) + b"\x00\x00\x00")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "bad shape"),
        ({"dtype": "F32", "shape": "4", "data_offsets": [0, 4]}, "bad shape"),
        ({"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}, "bad shape"),
        ({"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}, "bad shape"),
        ({"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}, "bad shape"),
        ({"dtype": "F32", "shape": [1]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "bad data_offsets"),
        ("not an entry", "bad data_offsets"),
    ],
)
def test_rejects_malformed_entries(entry: object, problem: str) -> None:
    with raises_wire(BAD, f"tensor 'w': {problem}"):
        parse_safetensors(raw_blob({"w": entry}, bytes(4)))


# ---- schema and finiteness ----


def model() -> StateDict:
    return {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def test_schema_of_and_json_round_trip() -> None:
    schema = schema_of({**model(), "n": np.array([3], dtype=np.int64)})
    assert schema == {
        "w": TensorSpec((2, 3), "F32"),
        "b": TensorSpec((3,), "F32"),
        "n": TensorSpec((1,), "I64"),
    }
    as_json = json.loads(json.dumps(schema_to_json(schema)))
    assert as_json["w"] == {"shape": [2, 3], "dtype": "F32"}
    assert schema_from_json(as_json) == schema


def test_check_schema_accepts_a_match() -> None:
    check_schema(model(), schema_of(model()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"b": None}, r"missing tensor 'b' \(1 missing in all\)"),
        ({"extra": f32([1.0])}, r"unexpected tensor 'extra' \(1 unexpected in all\)"),
        ({"w": np.zeros((3, 2), np.float32)}, r"tensor 'w': shape \(3, 2\) != expected \(2, 3\)"),
        ({"w": np.zeros((2, 3), np.float64)}, "tensor 'w': dtype F64 != expected F32"),
        ({"b": np.zeros(3, np.int64)}, "tensor 'b': dtype I64 != expected F32"),
    ],
)
def test_check_schema_names_the_bad_key(change: dict[str, np.ndarray | None], message: str) -> None:
    tensors = model()
    for name, value in change.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    with raises_wire(BAD, message):
        check_schema(tensors, schema_of(model()))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_tensor(bad: float) -> None:
    tensors = model()
    tensors["b"] = f32([0.0, bad, 1.0])
    with raises_wire(BAD, "tensor 'b' holds NaN or Inf"):
        check_finite(tensors)


def test_check_finite_passes_finite_and_integer_tensors() -> None:
    check_finite({**sample(), "n": np.array([np.iinfo(np.int64).max], dtype=np.int64)})
    check_finite({"h": np.array([65504.0], dtype=np.float16)})
    with raises_wire(BAD, "tensor 'h' holds NaN or Inf"):
        check_finite({"h": np.array([np.inf], dtype=np.float16)})


BIG = 1_000_003  # float32 elements: several check blocks and a short last one


@pytest.mark.parametrize("index", [0, 65_535, 65_536, BIG - 1])
def test_check_finite_finds_one_bad_value_anywhere_in_a_large_tensor(index: int) -> None:
    array = np.zeros((BIG,), np.float32)
    array[index] = np.nan
    with raises_wire(BAD, "tensor 'big' holds NaN or Inf"):
        check_finite({"big": array.reshape(1, BIG)})


def test_check_finite_allocates_no_tensor_sized_mask() -> None:
    """The check works block by block: its peak allocation stays far below the 1 MB boolean
    mask that `np.isfinite` of this 4 MB tensor would take."""
    array = np.ones(BIG, np.float32)
    tracemalloc.start()
    try:
        check_finite({"big": array})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak


# ---- the cached layout check ----


def test_a_cached_layout_still_refuses_a_blob_of_another_size() -> None:
    blob = to_safetensors({"a": f32([1.0, 2.0]), "b": f32([3.0])})
    np.testing.assert_array_equal(parse_safetensors(blob)["b"], [3.0])
    # the same header again, now cached, over data 4 bytes short and 4 bytes long
    with raises_wire(BAD, r"tensor 'b': byte range \[8, 12\) is inconsistent"):
        parse_safetensors(blob[:-4])
    with raises_wire(BAD, "4 trailing bytes after the last tensor"):
        parse_safetensors(blob + bytes(4))
    again = parse_safetensors(bytearray(blob))
    again["a"][0] = 7.0  # views into the new buffer, not into the first blob
    assert parse_safetensors(blob)["a"][0] == 1.0


def test_refused_and_oversized_headers_are_not_cached() -> None:
    before = _cached_layout.cache_info().currsize
    with raises_wire(BAD, "bad shape"):
        parse_safetensors(
            raw_blob({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4))
        )
    assert _cached_layout.cache_info().currsize == before
    meta = {
        "__metadata__": {"pad": "x" * CACHED_HEADER_BYTES},
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    assert parse_safetensors(raw_blob(meta, f32([5.0]).tobytes()))["w"][0] == 5.0
    assert _cached_layout.cache_info().currsize == before
