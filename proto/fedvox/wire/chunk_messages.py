"""The chunk messages of Submit and Download, encoded and decoded without protobuf's copies.

Python's protobuf (upb) copies a `bytes` field when a message is built, when it is serialized,
when it is parsed and again every time the field is read: four copies of every blob on top of
gRPC's own. The encoders write a chunk message in the exact bytes protobuf would
(`SubmitRequest{chunk: SubmitChunk{offset, data}}` and `DownloadResponse{offset, data,
total_size}`: fields in number order, zero values left out), in one copy. The decoders return a
view into gRPC's message for exactly that canonical form, and hand everything else (a header,
other field orders, unknown fields, anything malformed) to protobuf, so that every message
still means what protobuf says it means. On the wire nothing changes: any gRPC peer may still
send and read plain protobuf messages.
"""

from __future__ import annotations

from typing import NamedTuple

from fedvox.v1 import federation_pb2 as pb

SUBMIT_METHOD = "/fedvox.v1.FederationService/Submit"
DOWNLOAD_METHODS = (
    "/fedvox.v1.FederationService/Download",
    "/fedvox.v1.AdminService/DownloadModel",
)

# tags: (field number << 3) | wire type; 0 = varint, 2 = length-delimited
_CHUNK = 2 << 3 | 2  # SubmitRequest.chunk
_OFFSET = 1 << 3 | 0  # SubmitChunk.offset
_DATA = 2 << 3 | 2  # SubmitChunk.data, DownloadResponse.data
_TOTAL = 3 << 3 | 0  # DownloadResponse.total_size
_INT64_MAX = (1 << 63) - 1


class Chunk(NamedTuple):
    """One chunk of a blob: `data` is its bytes from `offset` on."""

    offset: int
    data: bytes | memoryview
    total_size: int = 0  # a Download's: the whole blob's size (a Submit's header carries it)


def encode_submit(message: pb.SubmitRequest | Chunk) -> bytes:
    """gRPC's request serializer for Submit: a Chunk in protobuf's own bytes, one copy."""
    if isinstance(message, pb.SubmitRequest):
        return message.SerializeToString()
    if not _encodable(message):  # a negative number: protobuf's own ten-byte varint
        return _submit_protobuf(message).SerializeToString()
    fields = _fields(message)
    size = len(fields) + len(message.data)
    return b"".join((bytes((_CHUNK,)), _varint(size), fields, message.data))


def decode_submit(raw: bytes) -> pb.SubmitRequest | Chunk:
    """gRPC's request deserializer for Submit: a canonical chunk message as a Chunk whose data
    is a view into `raw`, any other message parsed by protobuf (which raises on bad bytes)."""
    chunk = None
    if raw[:1] == bytes((_CHUNK,)):
        length, at = _read_varint(raw, 1)
        if length is not None and at + length == len(raw):
            chunk = _canonical(raw, at, total=False)
    return chunk if chunk is not None else pb.SubmitRequest.FromString(raw)


def encode_download(message: pb.DownloadResponse | Chunk) -> bytes:
    """gRPC's response serializer for Download and DownloadModel, as `encode_submit`."""
    if isinstance(message, pb.DownloadResponse):
        return message.SerializeToString()
    if not _encodable(message):  # a negative number: protobuf's own ten-byte varint
        return _download_protobuf(message).SerializeToString()
    total = bytes((_TOTAL,)) + _varint(message.total_size) if message.total_size else b""
    return b"".join((_fields(message), message.data, total))


def decode_download(raw: bytes) -> pb.DownloadResponse | Chunk:
    """A site's response deserializer for Download, as `decode_submit`."""
    chunk = _canonical(raw, 0, total=True)
    return chunk if chunk is not None else pb.DownloadResponse.FromString(raw)


def download_chunk(message: pb.DownloadResponse | Chunk) -> Chunk:
    """The chunk a Download message carries, however it was decoded."""
    if isinstance(message, Chunk):
        return message
    return Chunk(message.offset, message.data, message.total_size)  # each field read once


def as_chunk(message: pb.SubmitRequest | Chunk) -> Chunk | None:
    """The chunk a Submit message carries, however it was decoded; None for the header."""
    if isinstance(message, Chunk):
        return message
    if not message.HasField("chunk"):
        return None
    return Chunk(message.chunk.offset, message.chunk.data)  # reads the bytes field once


def _encodable(chunk: Chunk) -> bool:
    return 0 <= chunk.offset <= _INT64_MAX and 0 <= chunk.total_size <= _INT64_MAX


def _fields(chunk: Chunk) -> bytes:
    """The offset field, and the data field's tag and length (the data itself follows)."""
    fields = bytearray()
    if chunk.offset:
        fields += bytes((_OFFSET,)) + _varint(chunk.offset)
    if len(chunk.data):
        fields += bytes((_DATA,)) + _varint(len(chunk.data))
    return bytes(fields)


def _canonical(raw: bytes, at: int, *, total: bool) -> Chunk | None:
    """The chunk in raw[at:] if it is exactly offset, data (and total_size) in canonical form."""
    offset, at = _optional_varint(raw, at, _OFFSET)
    if offset is None:
        return None
    data: bytes | memoryview = b""
    if raw[at : at + 1] == bytes((_DATA,)):
        size, at = _read_varint(raw, at + 1)
        if not size or at + size > len(raw):  # an empty field is left out: not canonical
            return None
        data, at = memoryview(raw)[at : at + size], at + size
    total_size = 0
    if total:
        value, at = _optional_varint(raw, at, _TOTAL)
        if value is None:
            return None
        total_size = value
    return Chunk(offset, data, total_size) if at == len(raw) else None


def _optional_varint(raw: bytes, at: int, tag: int) -> tuple[int | None, int]:
    """A non-zero int64 field at `at`, or 0 where it is left out; None if not canonical."""
    if raw[at : at + 1] != bytes((tag,)):
        return 0, at
    value, at = _read_varint(raw, at + 1)
    if value is None or not 0 < value <= _INT64_MAX:  # 0 is left out; above: negative
        return None, at
    return value, at


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


def _submit_protobuf(chunk: Chunk) -> pb.SubmitRequest:
    return pb.SubmitRequest(chunk=pb.SubmitChunk(offset=chunk.offset, data=bytes(chunk.data)))


def _download_protobuf(chunk: Chunk) -> pb.DownloadResponse:
    data = bytes(chunk.data)
    return pb.DownloadResponse(offset=chunk.offset, data=data, total_size=chunk.total_size)
