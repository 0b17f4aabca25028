"""State dicts as safetensors blobs, parsed without copies and without pickle.

The format is an 8-byte little-endian header length, a JSON header mapping
each tensor name to its dtype, shape and [begin, end) byte range, then the raw
data. Parsing it ourselves lets us return numpy views into the one buffer the
chunks were reassembled into, and check every field before trusting it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedvox.wire.digest import hasher
from fedvox.wire.errors import invalid
from fedvox.wire.files import write_all

Array = npt.NDArray[np.generic]
StateDict = dict[str, Array]

# safetensors dtype names we accept; anything else (objects, pickles) is refused.
DTYPES: dict[str, np.dtype[np.generic]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 16 * 1024 * 1024
# elements per block of the finiteness check: its 64 KiB mask stays in cache, where a mask of
# the whole tensor would cost a quarter of a float32 payload in memory
_FINITE_BLOCK = 1 << 16


@dataclass(frozen=True)
class TensorSpec:
    """What the server expects of one tensor."""

    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES


Schema = dict[str, TensorSpec]


def dtype_name(array: Array) -> str:
    try:
        return _NAMES[
            array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        ]
    except KeyError:
        raise invalid(f"unsupported dtype {array.dtype}") from None


def schema_of(tensors: Mapping[str, Array]) -> Schema:
    return {
        k: TensorSpec(tuple(int(d) for d in v.shape), dtype_name(v)) for k, v in tensors.items()
    }


def schema_to_json(schema: Schema) -> dict[str, dict[str, object]]:
    return {k: {"shape": list(s.shape), "dtype": s.dtype} for k, s in schema.items()}


def schema_from_json(data: Mapping[str, Mapping[str, object]]) -> Schema:
    out: Schema = {}
    for k, v in data.items():
        shape = v["shape"]
        assert isinstance(shape, list)
        out[k] = TensorSpec(tuple(int(d) for d in shape), str(v["dtype"]))
    return out


def _little_endian_contiguous(array: Array) -> Array:
    # safetensors is little-endian; np.ascontiguousarray would also turn 0-d into shape (1,)
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else array.copy(order="C")


def _header(tensors: Mapping[str, Array]) -> tuple[bytes, list[Array]]:
    meta: dict[str, object] = {}
    arrays: list[Array] = []
    offset = 0
    for name in sorted(tensors):
        array = _little_endian_contiguous(tensors[name])
        size = array.nbytes
        meta[name] = {
            "dtype": dtype_name(array),
            "shape": list(array.shape),
            "data_offsets": [offset, offset + size],
        }
        arrays.append(array)
        offset += size
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw, arrays


def write_safetensors(tensors: Mapping[str, Array], path: Path) -> str:
    """Write a blob atomically (tmp + fsync + rename) and return its digest."""
    header, arrays = _header(tensors)
    digest = hasher()
    digest.update(header)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb", buffering=0) as f:  # unbuffered: every write below is write_all's
        write_all(f.fileno(), header)
        for array in arrays:
            view = memoryview(array.reshape(-1).view(np.uint8).data)
            digest.update(view)
            write_all(f.fileno(), view)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return digest.hexdigest()


def to_safetensors(tensors: Mapping[str, Array]) -> bytes:
    """Serialise to bytes (for uploads, which are small next to the server's copies)."""
    header, arrays = _header(tensors)
    return b"".join([header, *(a.reshape(-1).view(np.uint8).tobytes() for a in arrays)])


def parse_safetensors(buffer: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> StateDict:
    """Return numpy views into `buffer`; refuse any malformed or overlapping layout."""
    view = memoryview(buffer.data if isinstance(buffer, np.ndarray) else buffer).cast("B")
    if len(view) < 8:
        raise invalid("blob shorter than the 8-byte safetensors header length")
    (hlen,) = struct.unpack("<Q", view[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(view):
        raise invalid(f"safetensors header length {hlen} exceeds the blob")
    data = view[8 + hlen :]
    out: StateDict = {}
    header = bytes(view[8 : 8 + hlen])
    check = _cached_layout if len(header) <= CACHED_HEADER_BYTES else _layout
    layout, end = check(header, len(data))
    for name, dtype, count, shape, begin in layout:
        try:
            out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
        except ValueError as exc:  # more than 64 dimensions, or sizes numpy cannot index
            raise invalid(f"tensor {name!r}: bad shape: {exc}") from None
    if end != len(data):
        raise invalid(f"{len(data) - end} trailing bytes after the last tensor")
    return out


_Layout = tuple[tuple[str, np.dtype[np.generic], int, tuple[int, ...], int], ...]


def _layout(header: bytes, data_size: int) -> tuple[_Layout, int]:
    """The checked (name, dtype, count, shape, begin) of every tensor, in data order, and
    where the last one ends.

    The shapes are checked against numpy's limits as the views are made."""
    try:
        meta = json.loads(header)
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, huge ints, deep nesting
        raise invalid(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise invalid("safetensors header is not a JSON object")
    meta.pop("__metadata__", None)
    layout = []
    expected_begin = 0
    for name, entry in sorted(meta.items(), key=lambda kv: _begin(kv[0], kv[1])):
        dtype, shape, (begin, end) = _entry(name, entry)
        count = math.prod(shape)
        if begin != expected_begin or end - begin != count * dtype.itemsize or end > data_size:
            raise invalid(f"tensor {name!r}: byte range [{begin}, {end}) is inconsistent")
        layout.append((name, dtype, count, shape, begin))
        expected_begin = end
    return tuple(layout), expected_begin


# Every upload of a federation, and every blob read back from the journal, carries the
# same header, and checking it is most of a parse's time (about 7 us per tensor in Python,
# 0.7 ms for the default UNet). The key is the exact header bytes and the data size,
# everything the checks read, so a cached layout is one that passed them; a refused
# header raises and is not cached. Only headers up to 256 KiB (the default UNet's is
# 10 KB) are kept, so the cache holds at most a few MB whatever sites send.
CACHED_HEADER_BYTES = 256 * 1024
_cached_layout = functools.lru_cache(maxsize=16)(_layout)


def _begin(name: str, entry: object) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise invalid(f"tensor {name!r}: bad data_offsets")
    return int(offsets[0])


def _entry(
    name: str, entry: dict[str, object]
) -> tuple[np.dtype[np.generic], tuple[int, ...], list[int]]:
    dtype = DTYPES.get(str(entry.get("dtype")))
    shape = entry.get("shape")
    if dtype is None:
        raise invalid(f"tensor {name!r}: unsupported dtype {entry.get('dtype')!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise invalid(f"tensor {name!r}: bad shape {shape!r}")
    offsets = entry["data_offsets"]
    assert isinstance(offsets, list)
    return dtype, tuple(shape), [int(o) for o in offsets]


def check_schema(tensors: Mapping[str, Array], schema: Schema) -> None:
    """Names, shapes and dtypes must match exactly; the message names the first bad key."""
    missing = sorted(set(schema) - set(tensors))
    extra = sorted(set(tensors) - set(schema))
    if missing:
        raise invalid(f"missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    if extra:
        raise invalid(f"unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")
    for name, spec in schema.items():
        got = tensors[name]
        if tuple(got.shape) != spec.shape:
            raise invalid(f"tensor {name!r}: shape {tuple(got.shape)} != expected {spec.shape}")
        if dtype_name(got) != spec.dtype:
            raise invalid(f"tensor {name!r}: dtype {dtype_name(got)} != expected {spec.dtype}")


def check_finite(tensors: Mapping[str, Array]) -> None:
    scratch = np.empty(_FINITE_BLOCK, np.bool_)
    for name, array in tensors.items():
        if array.dtype.kind == "f" and not _all_finite(array, scratch):
            raise invalid(f"tensor {name!r} holds NaN or Inf")


def _all_finite(array: Array, scratch: npt.NDArray[np.bool_]) -> bool:
    flat = array.reshape(-1)
    for start in range(0, flat.size, scratch.size):
        block = flat[start : start + scratch.size]
        mask = scratch[: block.size]
        np.isfinite(block, out=mask)
        if not mask.all():
            return False
    return True
