"""How many threads the server's BLAS may use: one, unless the operator chose otherwise."""

from __future__ import annotations

import os

import scipy.linalg.blas  # noqa: F401 (loaded first: threadpoolctl limits loaded libraries only)
from threadpoolctl import threadpool_limits

# the variables with which an operator sizes BLAS thread pools; any of them set wins
OPERATOR_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads() -> bool:
    """Run BLAS (numpy's and scipy's OpenBLAS) on the calling thread alone; returns whether
    fedvox applied the limit (False where the operator set one of OPERATOR_VARIABLES).

    The server's BLAS work is FedAvg's axpy, which memory bandwidth bounds, so more threads
    barely speed it up. But OpenBLAS's worker threads keep spinning for a while after each
    call, and on 2 cores that took a core from gRPC: with the default of one thread per core a
    19 MB upload cost the server 45 ms of CPU time instead of 20, and took 31 ms instead of 24
    (`benchmarks/upload_cpu.py`, docs/performance.md section 1).
    """
    if any(name in os.environ for name in OPERATOR_VARIABLES):
        return False
    threadpool_limits(limits=1, user_api="blas")
    return True
