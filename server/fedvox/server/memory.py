"""Process-wide memory settings of the server process."""

from __future__ import annotations

import ctypes
import os

_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's <malloc.h>
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process; False where it does not apply (not glibc)
    or the operator chose with MALLOC_ARENA_MAX.

    glibc gives threads arenas of their own, up to 8 per core, and every gRPC worker thread
    that handles an upload then keeps megabytes of freed message buffers in its arena. With
    two arenas a 19 MB upload raised the server's RSS by 1.01 to 1.09x the payload, against
    1.34 to 1.41x with glibc's default (benchmarks/transport.py, docs/performance.md). The
    server's threads mostly wait on the GIL, so fewer arenas cost no measurable contention."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    # the C library already loaded into this process (no library search, no subprocess)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return bool(mallopt and mallopt(_M_ARENA_MAX, arenas))
