"""Cutting blobs into chunks and putting them back together, with checks."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import grpc

from fedvox.wire.digest import hasher
from fedvox.wire.errors import WireError, invalid

CHUNK_SIZE = 1024 * 1024  # ~1 MiB measured fastest and stays under gRPC's 4 MiB cap


def iter_file_chunks(
    path: Path, offset: int = 0, chunk_size: int = CHUNK_SIZE
) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, bytes) from a file without loading it: serving memory stays ~1 chunk."""
    size = path.stat().st_size
    if not 0 <= offset <= size:
        raise WireError(
            grpc.StatusCode.OUT_OF_RANGE, f"offset {offset} outside blob of {size} bytes"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        while offset < size:
            data = f.read(chunk_size)
            if not data:
                break
            yield offset, data
            offset += len(data)


def iter_buffer_chunks(
    buffer: bytes | bytearray | memoryview, offset: int = 0, chunk_size: int = CHUNK_SIZE
) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(buffer).cast("B")
    for start in range(offset, len(view), chunk_size):
        yield start, view[start : start + chunk_size]


def _anonymous_memory(size: int) -> memoryview:
    if not size:
        return memoryview(bytearray())
    if not hasattr(mmap, "MAP_PRIVATE"):
        return memoryview(mmap.mmap(-1, size))
    # private, so it counts as the process's own memory
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # Faulting a fresh payload in 4 KiB pages cost 6.4 ms per 19 MB here, more than the
        # copy; 2 MiB pages cut it to 1.5 ms (docs/performance.md, section 1). numpy asks the
        # same for its large arrays. RSS never exceeds the mapping.
        memory.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(memory)


class ChunkChecker:
    """Checks in-order chunks against a declared size and digest, keeping none of them.

    The server writes each chunk straight to the journal and reads the blob back from there
    (a memory map of the same page cache), so it needs no buffer of its own."""

    def __init__(self, size: int, digest: str, *, max_chunk: int = 4 * CHUNK_SIZE) -> None:
        if size < 0:
            raise invalid(f"negative blob size {size}")
        self.size = size
        self.expected_digest = digest.lower()
        self.max_chunk = max_chunk
        self.received = 0
        self._hash = hasher()

    def add(self, offset: int, data: bytes | memoryview) -> None:
        if len(data) > self.max_chunk:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"chunk of {len(data)} bytes exceeds the cap of {self.max_chunk}",
            )
        if offset != self.received:
            raise invalid(
                f"chunk at offset {offset}, expected {self.received} (out of order or gap)"
            )
        end = offset + len(data)
        if end > self.size:
            raise invalid(f"chunk ends at byte {end}, past the declared size {self.size}")
        self._hash.update(data)
        self.received = end

    def finish(self) -> None:
        if self.received != self.size:
            raise invalid(f"stream ended after {self.received} of {self.size} bytes (truncated)")
        actual = self._hash.hexdigest()
        if actual != self.expected_digest:
            raise WireError(
                grpc.StatusCode.DATA_LOSS,
                f"digest mismatch: declared {self.expected_digest}, got {actual}",
            )


class BlobAssembler:
    """Reassembles in-order chunks into one preallocated buffer and checks the digest.

    The buffer is allocated once from the declared size (after the caller has
    capped it), so a hostile sender cannot make us grow memory chunk by chunk.

    It is an anonymous memory map of its own: nothing zero-fills it up front (the kernel maps
    pages in as the chunks arrive, and every byte is written before `finish` hands it out), and
    freeing it gives the memory back to the system at once. A malloc'd buffer of this size
    would, after the first, come from the allocator's per-thread arenas, which keep freed
    payloads mapped: the RSS of a process receiving on many threads would creep up to many
    payloads however few it holds at once.
    """

    def __init__(self, size: int, digest: str, *, max_chunk: int = 4 * CHUNK_SIZE) -> None:
        self._checker = ChunkChecker(size, digest, max_chunk=max_chunk)
        self.buffer = _anonymous_memory(size)

    @property
    def received(self) -> int:
        return self._checker.received

    def add(self, offset: int, data: bytes | memoryview) -> None:
        self._checker.add(offset, data)  # first: nothing lands outside the buffer
        self.buffer[offset : offset + len(data)] = data

    def finish(self) -> memoryview:
        self._checker.finish()
        return self.buffer
