"""The server runs BLAS on one thread unless the operator chose otherwise (fedvox.server.blas)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from fedvox.server.blas import OPERATOR_VARIABLES, limit_blas_threads


def blas_threads() -> list[int]:
    return [int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every BLAS pool at 2 threads, as OpenBLAS starts on a 2-core machine; restored after."""
    for name in OPERATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    limiter = threadpool_limits(limits=2, user_api="blas")
    try:
        yield
    finally:
        limiter.restore_original_limits()


def test_blas_runs_on_one_thread(two_blas_threads: None) -> None:
    assert blas_threads() and set(blas_threads()) == {2}
    assert limit_blas_threads() is True
    assert set(blas_threads()) == {1}  # numpy's and scipy's OpenBLAS alike


def test_the_operators_setting_wins(
    two_blas_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert limit_blas_threads() is False
    assert set(blas_threads()) == {2}
