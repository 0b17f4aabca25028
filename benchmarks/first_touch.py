"""What memory touched for the first time costs: page-cache writes by size, buffers by page size.

Run from the repository root (docs/performance.md, section 1, has the figures):

    .venv/bin/python -m benchmarks.first_touch --mb 19 --files 30 --pause-s 5

No network and no server, in this process only, in the work folder (default: a temporary
folder; pass --workdir to test the disk the server's state lives on):

* `new files`: the payload written into --files new files per write size, which are all
  kept until the end, as a round journal keeps its uploads. Sizes alternate file by file.
  Only the writes are timed; each file is fsynced after them.
* `after a pause`: one file written, removed and written again --rewrites times, --pause-s
  seconds apart, per write size. A page freed this long ago may have been handed back to the
  host by a virtual machine's balloon.
* `checkpoint`: fedvox's `write_safetensors` (digest, 1 MiB writes, fsync) of the payload's
  state dict, against the same bytes written one tensor per call, --files new files each,
  alternating.
* `buffer`: a new anonymous memory map of each --buffer-mb size, filled with 1 MiB copies
  and unmapped, --rewrites times, --pause-s seconds apart: once asking the kernel for 2 MiB
  pages (MADV_HUGEPAGE, as a site's Download buffer does) and once with 4 KiB pages,
  alternating. Times include the map and the unmap.

Prints the median and worst milliseconds of each and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import transport as T  # noqa: N812 (its payload)
from fedvox.wire.digest import hasher
from fedvox.wire.files import WRITE_PIECE
from fedvox.wire.tensors import to_safetensors, write_safetensors

SIZES = (WRITE_PIECE, 2 * WRITE_PIECE, 4 * WRITE_PIECE)
Row = dict[str, Any]


def write_in(path: Path, data: bytes, size: int) -> float:
    """Seconds to write `data` into a new file in writes of `size` bytes (then fsync it)."""
    view = memoryview(data)
    with open(path, "wb", buffering=0) as f:
        started = time.perf_counter()
        for start in range(0, len(view), size):
            f.write(view[start : start + size])
        seconds = time.perf_counter() - started
        os.fsync(f.fileno())
    return seconds


def one_call_per_tensor(blob: memoryview, sizes: list[int], path: Path) -> None:
    """`write_safetensors` as it was until 2026-11-27: the digest, the header and then each
    tensor in a single write, fsync, rename. `blob` is the file's bytes, serialised untimed,
    and `sizes` its tensors' sizes in file order."""
    header = 8 + int.from_bytes(blob[:8], "little")
    digest = hasher()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        digest.update(blob[:header])
        f.write(blob[:header])
        start = header
        for size in sizes:
            digest.update(blob[start : start + size])
            f.write(blob[start : start + size])
            start += size
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def summary(seconds: list[float]) -> Row:
    return {"median_ms": statistics.median(seconds) * 1e3, "worst_ms": max(seconds) * 1e3}


def new_files(data: bytes, folder: Path, count: int) -> dict[str, Row]:
    times: dict[int, list[float]] = {size: [] for size in SIZES}
    for i in range(count):
        for size in SIZES:
            times[size].append(write_in(folder / f"new-{size}-{i}.bin", data, size))
    return {f"{size // WRITE_PIECE} MiB": summary(times[size]) for size in SIZES}


def after_pause(data: bytes, folder: Path, rewrites: int, pause_s: float) -> dict[str, Row]:
    rows = {}
    for size in SIZES[:2]:
        seconds = []
        for _ in range(rewrites):
            path = folder / f"pause-{size}.bin"
            seconds.append(write_in(path, data, size))
            path.unlink()
            time.sleep(pause_s)
        rows[f"{size // WRITE_PIECE} MiB"] = {
            **summary(seconds),
            "each_ms": [round(s * 1e3, 2) for s in seconds],
        }
    return rows


def checkpoints(weights: T.Weights, folder: Path, count: int) -> dict[str, Row]:
    blob = memoryview(to_safetensors(weights))
    sizes = [weights[name].nbytes for name in sorted(weights)]  # to_safetensors' order
    writers: dict[str, Callable[[Path], object]] = {
        "write_safetensors (1 MiB writes)": lambda path: write_safetensors(weights, path),
        "one write per tensor": lambda path: one_call_per_tensor(blob, sizes, path),
    }
    times: dict[str, list[float]] = {name: [] for name in writers}
    for i in range(count):
        for j, (name, write) in enumerate(writers.items()):
            started = time.perf_counter()
            write(folder / f"checkpoint-{j}-{i}.safetensors")
            times[name].append(time.perf_counter() - started)
    return {name: summary(seconds) for name, seconds in times.items()}


def fill_buffer(data: bytes, huge: bool) -> float:
    """Seconds to map a new anonymous buffer of len(data), copy `data` in and unmap it."""
    started = time.perf_counter()
    memory = mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        memory.madvise(mmap.MADV_HUGEPAGE)
    with memoryview(memory) as view:
        for start in range(0, len(data), WRITE_PIECE):
            view[start : start + WRITE_PIECE] = data[start : start + WRITE_PIECE]
    memory.close()
    return time.perf_counter() - started


def buffers(sizes_mb: list[float], rewrites: int, pause_s: float) -> dict[str, Row]:
    rows = {}
    for mb in sizes_mb:
        data = np.random.default_rng(2).bytes(int(mb * T.MB))
        seconds: dict[str, list[float]] = {"2 MiB pages": [], "4 KiB pages": []}
        for _ in range(rewrites):
            seconds["2 MiB pages"].append(fill_buffer(data, huge=True))
            seconds["4 KiB pages"].append(fill_buffer(data, huge=False))
            time.sleep(pause_s)
        for pages, times in seconds.items():
            rows[f"{mb:g} MB, {pages}"] = {
                **summary(times),
                "each_ms": [round(s * 1e3, 2) for s in times],
            }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=19.0, help="payload size in MB (1e6)")
    parser.add_argument("--files", type=int, default=30, help="new files per write size")
    parser.add_argument("--rewrites", type=int, default=6, help="rewrites per size, paused")
    parser.add_argument("--pause-s", type=float, default=5.0, help="seconds between rewrites")
    parser.add_argument("--workdir", type=Path, help="where the files go (default: temp)")
    parser.add_argument(
        "--buffer-mb", type=float, nargs="+", default=[19.0, 256.0], help="buffer sizes in MB"
    )
    args = parser.parse_args(argv)
    if min(args.mb, *args.buffer_mb) <= 0 or args.files < 1 or args.rewrites < 1:
        parser.error("--mb, --buffer-mb, --files and --rewrites must be positive")
    if args.pause_s < 0:
        parser.error("--pause-s must be >= 0")
    weights = T.make_weights(int(args.mb * T.MB))
    data = np.random.default_rng(1).bytes(int(args.mb * T.MB))
    with tempfile.TemporaryDirectory(prefix="fedvox-first-touch-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        results = {
            "new files": new_files(data, folder, args.files),
            "after a pause": after_pause(data, folder, args.rewrites, args.pause_s),
            "checkpoint": checkpoints(weights, folder, args.files),
            "buffer": buffers(args.buffer_mb, args.rewrites, args.pause_s),
        }
    print(f"{len(data):,} bytes; medians of {args.files} files, {args.rewrites} paused rewrites")
    print(f"{'measurement':48} {'median ms':>10} {'worst ms':>9}")
    for group, rows in results.items():
        for name, row in rows.items():
            label = f"{group}: {name}"
            print(f"{label:48} {row['median_ms']:10.2f} {row['worst_ms']:9.2f}")
    record = {"benchmark": "fedvox-first-touch", "payload_bytes": len(data), **vars(args)}
    record["workdir"] = str(args.workdir or "")
    print(json.dumps({**record, "results": results}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
