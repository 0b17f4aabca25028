"""write_all: every byte lands, in pieces of at most WRITE_PIECE, despite short writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedvox.wire.files import WRITE_PIECE, write_all


def test_write_piece_is_one_mib() -> None:
    assert WRITE_PIECE == 1_048_576


def test_writes_every_byte_in_pieces_of_at_most_one_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * WRITE_PIECE + 12_345)
    asked: list[int] = []
    real_write = os.write

    def short_write(fd: int, view: memoryview) -> int:
        asked.append(len(view))
        # the kernel may write less than it is given: here at most 700,000 bytes a call
        return real_write(fd, view[:700_000])

    monkeypatch.setattr(os, "write", short_write)
    path = tmp_path / "blob"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, memoryview(data))
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert max(asked) == WRITE_PIECE
    # 3,158,073 bytes at 700,000 a call: four calls, then the last 358,073 bytes
    assert len(asked) == 5
    assert asked[-1] == len(data) - 4 * 700_000


def test_empty_data_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, b"")
    finally:
        os.close(fd)
    assert path.read_bytes() == b""
