"""Process-wide memory settings of the server process (glibc's malloc)."""

from __future__ import annotations

import ctypes
import os

# mallopt's parameter numbers in glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENAS = 2
# Above the 1 MiB chunks: their buffers come from an arena, not from mmaps of their own.
MMAP_THRESHOLD = 32 * 1024 * 1024
# What an arena may keep free at its top; 4 MiB still let the Download faults back.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

# (parameter, value, the environment variable with which an operator overrides it)
_SETTINGS = (
    (_M_ARENA_MAX, ARENAS, "MALLOC_ARENA_MAX"),
    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
)


def tune_malloc() -> dict[str, bool]:
    """Set glibc's malloc up for a server of many threads moving 1 MiB chunks.

    Returns, per environment variable, whether fedvox's value was applied: False where it
    does not apply (not glibc) or the operator chose with that variable.

    - **Arenas.** glibc gives threads arenas of their own, up to 8 per core, and every gRPC
      worker thread that handles an upload then keeps megabytes of freed message buffers in its
      arena. With two arenas a 19 MB upload raised the server's RSS by 1.01 to 1.09x the
      payload, against 1.34 to 1.41x with glibc's default. The server's threads mostly wait on
      the GIL, so fewer arenas cost no measurable contention.
    - **Thresholds.** glibc serves 1 MiB chunk buffers with fresh mmaps until a free raises
      its threshold, and a thread arena hands freed memory back to the kernel above its trim
      threshold. Either way every chunk of a Download was faulted in afresh in some server
      processes: 2 page faults per 4 KiB served, twice the CPU time and half the throughput.
      Fixed thresholds keep the chunk buffers in the arenas. The price: the first upload of a
      process leaves up to TRIM_THRESHOLD per arena resident, ready for the next.

    All figures: benchmarks/transport.py, docs/performance.md section 1.
    """
    # the C library already loaded into this process (no library search, no subprocess)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    applied = {}
    for parameter, value, variable in _SETTINGS:
        chosen = variable in os.environ
        applied[variable] = bool(mallopt and not chosen and mallopt(parameter, value))
    return applied
