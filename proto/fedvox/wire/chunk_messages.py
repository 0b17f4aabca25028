"""Submit's chunk messages, encoded and decoded without protobuf's copies of the data.

Python's protobuf (upb) copies a `bytes` field when a message is built, when it is serialized,
when it is parsed and again every time the field is read: four copies of every upload on top of
gRPC's own. `encode_submit` writes a chunk message in the exact bytes protobuf would
(`SubmitRequest{chunk: SubmitChunk{offset, data}}`, fields in number order, zero values left
out), in one copy. `decode_submit` returns a view into gRPC's message for exactly that
canonical form, and hands everything else (the header, other field orders, unknown fields,
anything malformed) to protobuf, so that every message still means what protobuf says it means.
On the wire nothing changes: any gRPC client may still upload with plain protobuf messages.
"""

from __future__ import annotations

from typing import NamedTuple

from fedvox.v1 import federation_pb2 as pb

SUBMIT_METHOD = "/fedvox.v1.FederationService/Submit"

# tags: (field number << 3) | wire type; 0 = varint, 2 = length-delimited
_CHUNK = 2 << 3 | 2  # SubmitRequest.chunk
_OFFSET = 1 << 3 | 0  # SubmitChunk.offset
_DATA = 2 << 3 | 2  # SubmitChunk.data
_INT64_MAX = (1 << 63) - 1


class Chunk(NamedTuple):
    """One chunk of an upload: `data` is the blob's bytes from `offset` on."""

    offset: int
    data: bytes | memoryview


def encode_submit(message: pb.SubmitRequest | Chunk) -> bytes:
    """gRPC's request serializer for Submit: a Chunk in protobuf's own bytes, one copy."""
    if not isinstance(message, Chunk) or not 0 <= message.offset <= _INT64_MAX:
        request = message if isinstance(message, pb.SubmitRequest) else _as_protobuf(message)
        return request.SerializeToString()
    size = len(message.data)
    inner = bytearray()
    if message.offset:
        inner += bytes((_OFFSET,)) + _varint(message.offset)
    if size:
        inner += bytes((_DATA,)) + _varint(size)
    return b"".join((bytes((_CHUNK,)), _varint(len(inner) + size), inner, message.data))


def decode_submit(raw: bytes) -> pb.SubmitRequest | Chunk:
    """gRPC's request deserializer for Submit: a canonical chunk message as a Chunk whose data
    is a view into `raw`, any other message parsed by protobuf (which raises on bad bytes)."""
    chunk = _canonical_chunk(raw)
    return chunk if chunk is not None else pb.SubmitRequest.FromString(raw)


def as_chunk(message: pb.SubmitRequest | Chunk) -> Chunk | None:
    """The chunk a Submit message carries, however it was decoded; None when it holds none."""
    if isinstance(message, Chunk):
        return message
    if not message.HasField("chunk"):
        return None
    return Chunk(message.chunk.offset, message.chunk.data)  # reads the bytes field once


def _canonical_chunk(raw: bytes) -> Chunk | None:
    if raw[:1] != bytes((_CHUNK,)):
        return None
    length, at = _read_varint(raw, 1)
    if length is None or at + length != len(raw):
        return None
    offset = 0
    if raw[at : at + 1] == bytes((_OFFSET,)):
        value, at = _read_varint(raw, at + 1)
        if value is None or not 0 < value <= _INT64_MAX:  # 0 is left out; above: negative
            return None
        offset = value
    if at == len(raw):
        return Chunk(offset, b"")
    if raw[at : at + 1] != bytes((_DATA,)):
        return None
    size, at = _read_varint(raw, at + 1)
    if not size or at + size != len(raw):  # an empty field is left out: not canonical
        return None
    return Chunk(offset, memoryview(raw)[at:])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, at: int) -> tuple[int | None, int]:
    """(value, index after it), or (None, at) if `raw` holds no whole varint of 10 bytes or
    fewer at `at`."""
    value = 0
    for i, byte in enumerate(raw[at : at + 10]):
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, at + i + 1
    return None, at


def _as_protobuf(chunk: Chunk) -> pb.SubmitRequest:
    return pb.SubmitRequest(chunk=pb.SubmitChunk(offset=chunk.offset, data=bytes(chunk.data)))
