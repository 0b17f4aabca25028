"""Where an upload's time goes, in one warm server: fedvox's Submit against its baselines.

Run from the repository root (benchmarks/README.md explains every figure):

    .venv/bin/python -m benchmarks.upload_cpu --mb 19 --repeats 30

One fresh fedvox server whose rounds wait for `repeats + 2` sites takes an INIT upload of the
payload as in `transport.py`. Every site then holds a training task; the first one's DELTA
warms the round up untimed (it starts the round's sums) and the last one never submits, so the
round stays open. In every repeat, interleaved:

* `fedvox Submit DELTA`: `Connection.submit` of the next site's DELTA, which is what a site
  runs; the server checks the digest, parses and checks it, journals it durably and folds it;
* `gRPC floor up`: the same messages to `transport.py`'s no-op gRPC server (grpcio alone);
* `digest + write + fsync`: what a durable, digest-checked upload must do besides moving
  bytes, in this process, with no network at all;
* `raw TCP up`: the physical baseline of `transport.py`.

For each it reports the median wall time and the median CPU time of the serving process and of
this process (every thread, nanosecond clocks). Ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import transport as T  # noqa: N812 (its server, payload and TCP helpers)
from benchmarks.download_cpu import Paths, parse_args, print_rows, time_paths, training_sites
from fedvox.v1 import federation_pb2 as pb


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv)
    payload = T.make_payload(args.mb)
    raw, floor = T.RawTcp(payload.size), T.GrpcFloor(payload.size)
    count = args.repeats + 2
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fedvox-bench-") as tmp,
            T.fedvox_server(Path(tmp), "upload", sites=count) as (server, address),
        ):
            sites, train = training_sites(address, count, payload, "upload_cpu")
            uploads: Iterator[int] = iter(range(count - 1))  # the last site never submits

            def submit_next() -> None:
                i = next(uploads)
                response = T._submit(
                    sites[i], train[i], pb.PAYLOAD_KIND_DELTA, payload.delta, payload.delta_digest
                )
                T._check(response, f"DELTA upload of site {i}")

            submit_next()  # the round's first DELTA, untimed
            paths: Paths = {
                "upload": (server.pid, submit_next),
                "floor_up": (floor.process.pid or 0, lambda: floor.send(payload.delta)),
                "persist": (0, lambda: T.digest_and_persist(payload.delta, Path(tmp))),
                "raw_up": (raw.process.pid or 0, lambda: raw.send(payload.delta)),
            }
            for name in ("floor_up", "persist", "raw_up"):  # untimed warm-up
                paths[name][1]()
            figures = time_paths(paths, args.repeats, "raw_up")
            for site in sites:
                site.close()
    finally:
        raw.close()
        floor.close()

    print(f"upload of {payload.size:,} bytes, {os.cpu_count()} CPUs, medians of {args.repeats}")
    print_rows(
        figures,
        {
            "raw_up": "raw TCP up",
            "floor_up": "gRPC floor up (grpcio alone)",
            "persist": "digest + write + fsync",
            "upload": "fedvox Submit DELTA",
        },
    )
    summary = {
        "benchmark": "fedvox-upload-cpu",
        "payload_bytes": payload.size,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "paths": figures,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
