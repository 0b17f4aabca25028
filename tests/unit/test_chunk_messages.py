"""Submit's chunk messages without protobuf's copies (fedvox.wire.chunk_messages): the same
bytes as protobuf on the way out, the same meaning as protobuf on the way in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from fedvox.server.service import ChunkMessages
from fedvox.v1 import federation_pb2 as pb
from fedvox.wire.chunk_messages import (
    DOWNLOAD_METHODS,
    SUBMIT_METHOD,
    Chunk,
    as_chunk,
    decode_download,
    decode_submit,
    download_chunk,
    encode_download,
    encode_submit,
)

OFFSETS = [0, 1, 127, 128, 300, 1 << 20, 1 << 40, (1 << 63) - 1]
SIZES = [0, 1, 127, 128, 16_384, 1 << 20]


def protobuf_bytes(offset: int, data: bytes) -> bytes:
    return pb.SubmitRequest(chunk=pb.SubmitChunk(offset=offset, data=data)).SerializeToString()


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("size", SIZES)
def test_a_chunk_is_encoded_as_protobuf_encodes_it_and_decoded_back(offset: int, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    raw = encode_submit(Chunk(offset, memoryview(data)))
    assert raw == protobuf_bytes(offset, data)
    decoded = decode_submit(raw)
    assert isinstance(decoded, Chunk)  # the fast path took it
    assert decoded.offset == offset and bytes(decoded.data) == data


def test_the_decoded_data_is_a_view_into_the_message_not_a_copy() -> None:
    raw = protobuf_bytes(4096, b"x" * 1000)
    decoded = decode_submit(raw)
    assert isinstance(decoded, Chunk) and isinstance(decoded.data, memoryview)
    assert decoded.data.obj is raw


def test_a_header_is_left_to_protobuf_both_ways() -> None:
    header = pb.SubmitRequest(header=pb.SubmitHeader(site_id="site-a", size=5, digest="ab"))
    raw = encode_submit(header)
    assert raw == header.SerializeToString()
    decoded = decode_submit(raw)
    assert isinstance(decoded, pb.SubmitRequest) and decoded == header
    assert as_chunk(decoded) is None


def test_a_negative_offset_goes_through_protobuf_and_keeps_its_meaning() -> None:
    raw = encode_submit(Chunk(-5, b"abc"))
    assert raw == protobuf_bytes(-5, b"abc")
    decoded = decode_submit(raw)
    assert isinstance(decoded, pb.SubmitRequest)
    assert as_chunk(decoded) == Chunk(-5, b"abc")


@pytest.mark.parametrize(
    "raw",
    [
        # data before offset: valid protobuf, not the canonical order
        bytes([0x12, 7, 0x12, 3]) + b"abc" + bytes([0x08, 0x05]),
        # an unknown field after the data
        bytes([0x12, 7, 0x08, 0x05, 0x12, 3]) + b"abc" + bytes([0x18, 0x01]),
        # the offset twice: protobuf keeps the last one
        bytes([0x12, 11, 0x08, 0x05, 0x08, 0x09, 0x12, 3]) + b"abc" + bytes([0x08, 0x07]),
        # an empty data field written out, and an offset of zero written out
        bytes([0x12, 4, 0x08, 0x00, 0x12, 0x00]),
        # a chunk field twice in the outer message: protobuf merges them
        bytes([0x12, 2, 0x08, 0x05, 0x12, 5, 0x12, 3]) + b"abc",
    ],
)
def test_any_other_form_of_a_chunk_means_what_protobuf_says(raw: bytes) -> None:
    expected = pb.SubmitRequest.FromString(raw)
    decoded = decode_submit(raw)
    assert isinstance(decoded, pb.SubmitRequest)
    assert as_chunk(decoded) == Chunk(expected.chunk.offset, expected.chunk.data)


@pytest.mark.parametrize(
    ("protobuf", "decode", "raw"),
    [
        # the outer length runs past the end
        (pb.SubmitRequest, decode_submit, bytes([0x12, 9, 0x08, 0x05, 0x12, 3]) + b"abc"),
        # the data length runs past the end
        (pb.SubmitRequest, decode_submit, bytes([0x12, 5, 0x08, 0x05, 0x12, 9]) + b"abc"),
        (pb.SubmitRequest, decode_submit, bytes([0x12, 0x80])),  # a truncated varint
        (pb.SubmitRequest, decode_submit, b"\xff\xff\xff"),
        # the data length runs past the end
        (pb.DownloadResponse, decode_download, bytes([0x08, 0x05, 0x12, 9]) + b"abc"),
        (pb.DownloadResponse, decode_download, bytes([0x08, 0x80])),  # a truncated varint
        (pb.DownloadResponse, decode_download, b"\xff\xff\xff"),
    ],
)
def test_malformed_bytes_are_refused_as_protobuf_refuses_them(
    protobuf: Any, decode: Callable[[bytes], object], raw: bytes
) -> None:
    with pytest.raises(DecodeError):
        protobuf.FromString(raw)
    with pytest.raises(DecodeError):
        decode(raw)


def test_the_server_decodes_submit_and_encodes_downloads_and_leaves_the_rest() -> None:
    def behaviour(requests: object, context: object) -> None:
        return None

    def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.stream_unary_rpc_method_handler(
            behaviour,
            request_deserializer=pb.SubmitRequest.FromString,
            response_serializer=pb.SubmitResponse.SerializeToString,
        )

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    def streaming(request: object, context: object) -> Iterator[Any]:
        yield from ()

    def downloads(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_stream_rpc_method_handler(
            streaming,
            request_deserializer=pb.DownloadRequest.FromString,
            response_serializer=pb.DownloadResponse.SerializeToString,
        )

    for method in DOWNLOAD_METHODS:
        download = ChunkMessages().intercept_service(downloads, Details(method))
        assert download is not None and download.response_serializer is encode_download
        assert download.request_deserializer == pb.DownloadRequest.FromString
        assert download.unary_stream is streaming
    submit = ChunkMessages().intercept_service(continuation, Details(SUBMIT_METHOD))
    assert submit is not None and submit.request_deserializer is decode_submit
    assert submit.stream_unary is behaviour
    assert submit.response_serializer == pb.SubmitResponse.SerializeToString
    other = ChunkMessages().intercept_service(
        continuation, Details("/fedvox.v1.FederationService/Heartbeat")
    )
    assert other is not None and other.request_deserializer == pb.SubmitRequest.FromString


def test_the_method_paths_are_those_grpc_gives_the_rpcs() -> None:
    def path(service: str, name: str) -> str:
        method = pb.DESCRIPTOR.services_by_name[service].methods_by_name[name]
        return f"/{method.containing_service.full_name}/{method.name}"

    assert path("FederationService", "Submit") == SUBMIT_METHOD
    assert (path("FederationService", "Download"), path("AdminService", "DownloadModel")) == (
        DOWNLOAD_METHODS
    )


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("total", [0, 1, 19_000_000, (1 << 63) - 1])
def test_a_download_chunk_is_encoded_as_protobuf_encodes_it_and_decoded_back(
    offset: int, size: int, total: int
) -> None:
    data = bytes(i % 251 for i in range(size))
    raw = encode_download(Chunk(offset, memoryview(data), total))
    assert (
        raw == pb.DownloadResponse(offset=offset, data=data, total_size=total).SerializeToString()
    )
    decoded = decode_download(raw)
    assert isinstance(decoded, Chunk)
    assert (decoded.offset, bytes(decoded.data), decoded.total_size) == (offset, data, total)
    if size:
        assert isinstance(decoded.data, memoryview) and decoded.data.obj is raw


@pytest.mark.parametrize(
    "raw",
    [
        bytes([0x12, 3]) + b"abc" + bytes([0x08, 0x05]),  # data before offset
        bytes([0x08, 0x05, 0x12, 3]) + b"abc" + bytes([0x18, 0x09, 0x20, 0x01]),  # unknown field
        bytes([0x18, 0x09, 0x08, 0x05]),  # total_size before offset
        bytes([0x08, 0x05, 0x08, 0x07]),  # the offset twice: the last one counts
        bytes([0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # -1
    ],
)
def test_any_other_download_message_means_what_protobuf_says(raw: bytes) -> None:
    expected = pb.DownloadResponse.FromString(raw)
    decoded = decode_download(raw)
    assert isinstance(decoded, pb.DownloadResponse)
    assert download_chunk(decoded) == Chunk(expected.offset, expected.data, expected.total_size)
