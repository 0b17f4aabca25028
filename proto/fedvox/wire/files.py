"""Writing large buffers to files in pieces the page cache handles cheaply."""

from __future__ import annotations

import os

# Writes of at most 1 MiB: Linux's ext4 puts a larger write in page-cache folios of up to
# 2 MiB, and on a virtual machine whose balloon hands free 2 MiB blocks back to the host, each
# such folio is backed again by the host when first written. Here that made 19 MB in 2 MiB
# writes take 45 to 49 ms instead of 2.4 ms (docs/performance.md, section 1).
WRITE_PIECE = 1024 * 1024


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of `data` to `fd`, at most WRITE_PIECE per call."""
    view = memoryview(data).cast("B")
    while view:  # os.write may write less than it was given
        view = view[os.write(fd, view[:WRITE_PIECE]) :]
