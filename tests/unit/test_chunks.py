"""Tests of chunked transfer and reassembly (fedvox.wire.chunks)."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedvox.wire.chunks import BlobAssembler, iter_buffer_chunks, iter_file_chunks
from fedvox.wire.tensors import parse_safetensors, to_safetensors
from tests.helpers import blake3_hex, raises_wire

CHUNK = 1000
BLOB = np.random.default_rng(0).bytes(2500)  # two and a half chunks
BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def blob_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(BLOB)
    return path


def assembler(max_chunk: int = CHUNK) -> BlobAssembler:
    return BlobAssembler(len(BLOB), blake3_hex(BLOB), max_chunk=max_chunk)


def test_file_chunks_cover_the_blob(blob_file: Path) -> None:
    chunks = list(iter_file_chunks(blob_file, chunk_size=CHUNK))
    assert [o for o, _ in chunks] == [0, 1000, 2000]
    assert [len(d) for _, d in chunks] == [1000, 1000, 500]
    for offset, data in chunks:
        assert data == BLOB[offset : offset + len(data)]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_chunks_cover_the_blob(kind: type) -> None:
    chunks = list(iter_buffer_chunks(kind(BLOB), chunk_size=CHUNK))
    assert [o for o, _ in chunks] == [0, 1000, 2000]
    assert [len(d) for _, d in chunks] == [1000, 1000, 500]
    assert b"".join(bytes(d) for _, d in chunks) == BLOB


def test_exact_multiple_has_no_empty_tail(tmp_path: Path) -> None:
    path = tmp_path / "even.bin"
    path.write_bytes(BLOB[:2000])
    assert [(o, len(d)) for o, d in iter_file_chunks(path, chunk_size=CHUNK)] == [
        (0, 1000),
        (1000, 1000),
    ]
    assert [(o, len(d)) for o, d in iter_buffer_chunks(BLOB[:2000], chunk_size=CHUNK)] == [
        (0, 1000),
        (1000, 1000),
    ]


def test_empty_blob_has_no_chunks(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    assert list(iter_file_chunks(path, chunk_size=CHUNK)) == []
    assert list(iter_buffer_chunks(b"", chunk_size=CHUNK)) == []


def test_resume_from_an_offset(blob_file: Path) -> None:
    from_file = list(iter_file_chunks(blob_file, offset=1200, chunk_size=CHUNK))
    from_buffer = list(iter_buffer_chunks(BLOB, offset=1200, chunk_size=CHUNK))
    for chunks in (from_file, from_buffer):
        assert [(o, len(d)) for o, d in chunks] == [(1200, 1000), (2200, 300)]
        assert b"".join(bytes(d) for _, d in chunks) == BLOB[1200:]
    assert list(iter_file_chunks(blob_file, offset=2500, chunk_size=CHUNK)) == []


@pytest.mark.parametrize("offset", [-1, 2501])
def test_file_offset_outside_blob_is_out_of_range(blob_file: Path, offset: int) -> None:
    with raises_wire(grpc.StatusCode.OUT_OF_RANGE, f"offset {offset} outside blob of 2500 bytes"):
        list(iter_file_chunks(blob_file, offset=offset, chunk_size=CHUNK))


def test_assembler_reassembles_exactly(blob_file: Path) -> None:
    asm = assembler()
    for offset, data in iter_file_chunks(blob_file, chunk_size=CHUNK):
        asm.add(offset, data)
    result = asm.finish()
    assert isinstance(result, memoryview)
    assert (result.format, result.readonly, result.tobytes()) == ("B", False, BLOB)


def test_assembler_resumes_from_received(blob_file: Path) -> None:
    asm = assembler()
    first = next(iter_buffer_chunks(BLOB, chunk_size=CHUNK))
    asm.add(*first)  # the "connection" breaks here
    assert asm.received == 1000
    for offset, data in iter_file_chunks(blob_file, offset=asm.received, chunk_size=CHUNK):
        asm.add(offset, data)
    assert asm.finish() == BLOB


def test_assembler_accepts_upper_case_digest_and_empty_blob() -> None:
    asm = BlobAssembler(len(BLOB), blake3_hex(BLOB).upper(), max_chunk=CHUNK)
    for offset, data in iter_buffer_chunks(BLOB, chunk_size=CHUNK):
        asm.add(offset, data)
    assert asm.finish() == BLOB
    assert bytes(BlobAssembler(0, blake3_hex(b"")).finish()) == b""


def test_out_of_order_chunk_is_refused_and_not_counted() -> None:
    asm = assembler()
    with raises_wire(BAD, r"chunk at offset 1000, expected 0 \(out of order or gap\)"):
        asm.add(1000, BLOB[1000:2000])
    assert asm.received == 0
    for offset, data in iter_buffer_chunks(BLOB, chunk_size=CHUNK):
        asm.add(offset, data)
    assert asm.finish() == BLOB


def test_gap_is_refused() -> None:
    asm = assembler()
    asm.add(0, BLOB[:1000])
    with raises_wire(BAD, "chunk at offset 2000, expected 1000"):
        asm.add(2000, BLOB[2000:])


def test_repeated_chunk_is_refused() -> None:
    asm = assembler()
    asm.add(0, BLOB[:1000])
    with raises_wire(BAD, "chunk at offset 0, expected 1000"):
        asm.add(0, BLOB[:1000])


def test_chunk_past_declared_size_is_refused() -> None:
    asm = assembler()
    asm.add(0, BLOB[:1000])
    asm.add(1000, BLOB[1000:2000])
    with raises_wire(BAD, "chunk ends at byte 3000, past the declared size 2500"):
        asm.add(2000, BLOB[2000:] + bytes(500))
    assert asm.received == 2000


def test_truncated_stream_is_refused() -> None:
    asm = assembler()
    asm.add(0, BLOB[:1000])
    asm.add(1000, BLOB[1000:2000])
    with raises_wire(BAD, r"stream ended after 2000 of 2500 bytes \(truncated\)"):
        asm.finish()


def test_corrupted_byte_is_data_loss() -> None:
    corrupted = bytearray(BLOB)
    corrupted[1234] ^= 0x01
    asm = assembler()
    for offset, data in iter_buffer_chunks(corrupted, chunk_size=CHUNK):
        asm.add(offset, data)
    with raises_wire(grpc.StatusCode.DATA_LOSS, "digest mismatch") as info:
        asm.finish()
    assert blake3_hex(BLOB) in info.value.message
    assert blake3_hex(corrupted) in info.value.message


def test_oversized_chunk_is_resource_exhausted() -> None:
    asm = assembler(max_chunk=999)
    with raises_wire(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk of 1000 bytes exceeds the cap of 999"
    ):
        asm.add(0, BLOB[:1000])
    assert asm.received == 0
    asm.add(0, BLOB[:999])  # exactly the cap is fine
    assert asm.received == 999


def test_negative_size_is_refused() -> None:
    with raises_wire(BAD, "negative blob size -1"):
        BlobAssembler(-1, blake3_hex(b""))


def test_assembled_blob_parses_into_writable_views() -> None:
    """A site parses the global model it downloaded in place: writable views into the
    receive buffer, not copies."""
    blob = to_safetensors({"w": np.arange(1000, dtype=np.float32)})
    asm = BlobAssembler(len(blob), blake3_hex(blob), max_chunk=CHUNK)
    for offset, data in iter_buffer_chunks(blob, chunk_size=CHUNK):
        asm.add(offset, data)
    buffer = asm.finish()
    tensors = parse_safetensors(buffer)
    tensors["w"][0] = 7.0
    assert tensors["w"].flags.writeable
    assert np.frombuffer(buffer, np.float32, count=1, offset=len(blob) - 4000)[0] == 7.0


def _vm_flags(address: int) -> list[str]:
    """The kernel's VmFlags for the mapping of this process that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(
    not Path("/proc/self/smaps").exists() or not hasattr(mmap, "MADV_HUGEPAGE"),
    reason="Linux only: the kernel shows the hint in /proc/self/smaps",
)
def test_the_receive_buffer_asks_for_huge_pages() -> None:
    # 4 KiB faults of a fresh payload cost more than copying it (docs/performance.md, section 1)
    buffer = BlobAssembler(8 * 1024 * 1024, blake3_hex(b"")).buffer
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    assert "hg" in _vm_flags(address)
