"""Helpers shared by the unit and integration tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest

from fedvox.wire.errors import WireError
from fedvox.wire.tensors import StateDict


@contextmanager
def raises_wire(code: grpc.StatusCode, match: str) -> Iterator[pytest.ExceptionInfo[WireError]]:
    """Expect a WireError whose message matches the regex `match` and whose code is `code`."""
    with pytest.raises(WireError, match=match) as info:
        yield info
    assert info.value.code == code, f"expected {code.name}, got {info.value.code.name}"


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def f32(values: object) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def assert_state_equal(got: StateDict, want: StateDict) -> None:
    """Same names, shapes, dtypes and bit-identical values."""
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == np.ascontiguousarray(array).tobytes(), name
