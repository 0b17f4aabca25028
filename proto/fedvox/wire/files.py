"""Writing files: large buffers in pieces the page cache handles cheaply, small files whole
or not at all, and directories synced so that a rename survives a power cut."""

from __future__ import annotations

import os
from pathlib import Path

# Writes of at most 1 MiB: Linux's ext4 can put a larger write in page-cache folios of 2 MiB,
# and on a virtual machine whose balloon hands free 2 MiB blocks back to the host, such a
# folio is, it seems, backed again by the host when first written. On the development VM,
# 19 MB in 2 MiB writes took about 45 ms instead of 3.7 (docs/performance.md, section 1).
WRITE_PIECE = 1024 * 1024


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of `data` to `fd`, at most WRITE_PIECE per call."""
    view = memoryview(data).cast("B")
    while view:  # os.write may write less than it was given
        view = view[os.write(fd, view[:WRITE_PIECE]) :]


def write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write `path` whole or not at all, durably: its directory is fsynced too, which also
    makes every earlier rename in it durable (a journal's blob before its header)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable: a file created or renamed in it is not
    found again after a power cut or an OS crash until its directory has been fsynced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
