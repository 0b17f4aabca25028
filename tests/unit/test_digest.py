"""The content digest (fedvox.wire.digest): BLAKE3 on the wire, SHA-256 only for old state."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvox.wire.digest import DIGEST_PATTERN, digest_hex, file_digest, hasher

# published test vectors: BLAKE3 of the empty input, SHA-256 of b"abc" (FIPS 180-2)
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_digest_is_blake3() -> None:
    assert digest_hex(b"") == BLAKE3_EMPTY
    assert hasher().hexdigest() == BLAKE3_EMPTY
    assert DIGEST_PATTERN.match(digest_hex(b"x"))


def test_running_digest_equals_the_one_shot_digest() -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one of BLAKE3's chunks and file reads
    running = hasher()
    for start in range(0, len(data), 70_001):
        running.update(memoryview(data)[start : start + 70_001])
    assert running.hexdigest() == digest_hex(data)
    assert digest_hex(data) != digest_hex(data[:-1])


def test_file_digest_reads_old_sha256_state(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    assert file_digest(path, "sha256") == SHA256_ABC
    path.write_bytes(b"")
    assert file_digest(path) == BLAKE3_EMPTY


def test_unknown_algorithm_is_named() -> None:
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        hasher("md5")
