"""Where a Download's time goes, and the best ratio to raw TCP that 2 cores allow.

Run from the repository root (benchmarks/README.md explains every figure):

    .venv/bin/python -m benchmarks.download_cpu --mb 19 --repeats 30

One fresh fedvox server takes an INIT upload of the payload as in `transport.py`; then, in
every repeat and interleaved, one site downloads the global model four ways:

* `fedvox Download`: `Connection.download`, which is what a site runs (fresh receive
  buffer, digest checked);
* `no digest, resident buffer`: the same RPC from the same server, chunks copied into a
  buffer that is already resident and nothing hashed: the transport's share;
* `digest only`: hashing the payload (BLAKE3, as fedvox does) in this process, nothing else;
* `raw TCP down`: the physical baseline of `transport.py` (timed here without its RSS
  sampling, like everything in this benchmark).

For each it reports the median wall time and the median CPU time of the server process
and of this process (every thread, nanosecond clocks). A Download must do at least the
transport's work plus the digest, so with C cores its wall time can be no shorter than
(their CPU time) / C: the `bound` line turns that into the best ratio to raw TCP any
scheduling of that work could reach. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import transport as T  # noqa: N812 (its server, payload and TCP helpers)
from fedvox.client.connection import Connection
from fedvox.v1 import federation_pb2 as pb
from fedvox.wire.digest import digest_hex

# by path name: (the pid of the process serving it, the transfer to time)
Paths = dict[str, tuple[int, Callable[[], object]]]
Figures = dict[str, dict[str, float]]


def server_cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far, in ns (Linux schedstat; 0 elsewhere)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        # a thread may end between listing and reading
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[0])
    return total


def _fetch_unverified(site: Connection, task: pb.Task, into: memoryview) -> None:
    request = pb.DownloadRequest(site_id=site.site_id, digest=task.global_digest)
    # the messages as the site reads them: fedvox's own decoding where that fedvox has it
    call = getattr(site, "download_call", site.stub.Download)
    for chunk in call(request, timeout=60):
        data = chunk.data  # a Chunk's or a DownloadResponse's: read once
        into[chunk.offset : chunk.offset + len(data)] = data


def parse_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """`--mb` and `--repeats`, the options of this benchmark and of upload_cpu.py."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=19.0, help="payload size in MB (1e6)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved repeats")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.mb <= 0:
        parser.error("--repeats and --mb must be positive")
    return args


def training_sites(
    address: str, count: int, payload: T.Payload, benchmark: str
) -> tuple[list[Connection], dict[int, pb.Task]]:
    """`count` registered sites, the INIT upload of `payload` done, and each site's training
    task, by site index."""
    sites = [Connection(address, f"bench-{i:03d}", give_up_after_s=10.0) for i in range(count)]
    for site in sites:
        site.register(10, {"benchmark": benchmark})
    (index, task), *_ = T._wait_for_tasks(sites, pb.TASK_TYPE_INIT, 1).items()
    response = T._submit(
        sites[index], task, pb.PAYLOAD_KIND_FULL, payload.full, payload.full_digest
    )
    T._check(response, "INIT upload")
    return sites, T._wait_for_tasks(sites, pb.TASK_TYPE_TRAIN, count)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv)
    payload = T.make_payload(args.mb)
    cores = os.cpu_count() or 1
    raw = T.RawTcp(payload.size)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fedvox-bench-") as tmp,
            T.fedvox_server(Path(tmp), "cpu") as (server, address),
        ):
            sites, tasks = training_sites(address, T.NUM_SITES, payload, "download_cpu")
            train = tasks[0]
            site, resident = sites[0], memoryview(bytearray(payload.size))
            paths: Paths = {
                "download": (server.pid, lambda: site.download(train.global_digest, payload.size)),
                "no_digest": (server.pid, lambda: _fetch_unverified(site, train, resident)),
                "digest": (server.pid, lambda: digest_hex(payload.full)),
                "raw_down": (raw.process.pid or 0, lambda: raw.fetch(payload.size)),
            }
            for _, run in paths.values():  # untimed warm-up of every path
                run()
            figures = time_paths(paths, args.repeats, "raw_down")
            for s in sites:
                s.close()
    finally:
        raw.close()

    work_ms = sum(
        figures[n]["server_cpu_ms"] + figures[n]["client_cpu_ms"] for n in ("no_digest", "digest")
    )
    bound_ms = max(work_ms / cores, figures["no_digest"]["wall_ms"], figures["digest"]["wall_ms"])
    best_ratio = figures["raw_down"]["wall_ms"] / bound_ms
    print(f"download of {payload.size:,} bytes, {cores} CPUs, medians of {args.repeats}")
    print_rows(
        figures,
        {
            "raw_down": "raw TCP down",
            "no_digest": "no digest, resident buffer",
            "digest": "digest only",
            "download": "fedvox Download",
        },
    )
    print(
        f"bound: transport + digest = {work_ms:.2f} ms of CPU on {cores} cores -> "
        f">= {bound_ms:.2f} ms wall -> at best {best_ratio:.2f}x raw TCP"
    )
    summary = {
        "benchmark": "fedvox-download-cpu",
        "payload_bytes": payload.size,
        "cpus": cores,
        "repeats": args.repeats,
        "paths": figures,
        "bound_ms": bound_ms,
        "best_ratio_vs_raw": best_ratio,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


def time_paths(paths: Paths, repeats: int, baseline: str) -> Figures:
    """Time every path once per repeat, interleaved; medians of wall time, of the serving
    process's CPU time and of this process's, and the ratio to the `baseline` path."""
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for repeat in range(repeats):
        for name, (pid, run) in paths.items():
            server0, client0 = server_cpu_ns(pid), time.process_time_ns()
            started = time.perf_counter()
            run()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(
                ((server_cpu_ns(pid) - server0) / 1e9, (time.process_time_ns() - client0) / 1e9)
            )
        print(f"repeat {repeat + 1}/{repeats}", file=sys.stderr)
    med = statistics.median
    return {
        name: {
            "wall_ms": med(wall[name]) * 1e3,
            "server_cpu_ms": med(c[0] for c in cpu[name]) * 1e3,
            "client_cpu_ms": med(c[1] for c in cpu[name]) * 1e3,
            "x_raw": med(wall[baseline]) / med(wall[name]),
        }
        for name in paths
    }


def print_rows(figures: Figures, labels: dict[str, str]) -> None:
    print(f"{'path':28} {'wall ms':>8} {'x raw':>6} {'srv CPU ms':>10} {'cli CPU ms':>10}")
    for name, label in labels.items():
        f = figures[name]
        print(
            f"{label:28} {f['wall_ms']:8.2f} {f['x_raw']:6.2f} "
            f"{f['server_cpu_ms']:10.2f} {f['client_cpu_ms']:10.2f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
