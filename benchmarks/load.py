"""Load benchmark: N sites upload a default-UNet-sized update to one server at the same time.

Run from the repository root with the development virtual environment:

    .venv/bin/python benchmarks/load.py --sites 50 --repeats 3

Each repeat starts a fresh server process (`python -m fedvox.server --insecure` on loopback,
FedAvg, one round, no evaluation) and drives the real protocol with
`fedvox.client.connection.Connection`, one connection (and one TCP channel) per site:

1. all N sites register; the one given the INIT task uploads the initial weights: the default
   3D UNet's state dict (`ModelSpec()`, 4.8M float32, 19 MB), built with torch and seed 0;
2. every site polls until it holds its round-1 TRAIN task;
3. from N threads released together, every site uploads a DELTA of that schema (finite,
   -1e-3 x the weights) with `Connection.submit`. Each must be accepted, not as a duplicate.

Measured: the wall time from the release to the last reply (aggregate throughput = N x blob
size / that time), and the server's RSS, sampled with psutil every --sample-ms, before the
release (baseline), at its peak while the uploads run, and at its peak until round 1 is
aggregated and checkpointed (completed_round = 1), and the most upload slots the server held
at once (from its log). Every repeat runs once per `max_concurrent_uploads` value of --caps
(0 = no cap), in a rotating order. Figures are medians over the repeats; stdout ends with
exactly one JSON line holding them all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil  # type: ignore[import-untyped]

from fedvox.client.connection import Connection
from fedvox.sim.processes import free_port, server_args, spawn, stop, wait_for_tasks, wait_healthy
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.digest import digest_hex
from fedvox.wire.tensors import StateDict, to_safetensors

MB = 1_000_000
log = logging.getLogger("load")


@dataclass(frozen=True)
class Blobs:
    full: bytes
    delta: bytes
    tensors: int
    parameters: int


def unet_blobs() -> Blobs:
    """The default UNet's initial weights (FULL) and a same-schema DELTA, as safetensors."""
    import torch

    from fedvox.client.model import build_model
    from fedvox.wire.taskconfig import ModelSpec

    torch.manual_seed(0)
    state = build_model(ModelSpec()).state_dict()
    weights: StateDict = {k: v.detach().cpu().numpy().copy() for k, v in state.items()}
    delta: StateDict = {
        k: np.asarray(v, np.float32) * np.float32(-1e-3) for k, v in weights.items()
    }
    return Blobs(
        to_safetensors(weights),
        to_safetensors(delta),
        len(weights),
        sum(int(v.size) for v in weights.values()),
    )


class RssSampler:
    """Samples a process's RSS in a thread; `mark()` starts a new peak window."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def mark(self) -> int:
        """The peak so far, then start over from the current RSS."""
        peak, self.peak = max(self.peak, self.rss()), self.rss()
        return peak

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Repeat:
    upload_seconds: float
    aggregate_mbps: float
    rss_baseline_bytes: int
    rss_peak_upload_bytes: int
    rss_peak_round_bytes: int  # through aggregation and the checkpoint
    round_seconds: float  # release -> completed_round == 1
    accepted: int
    buffers_high_water: int  # the most upload slots held at once, from the server's log


@contextmanager
def server(workdir: Path, sites: int, cap: int) -> Iterator[tuple[int, str]]:
    """A fresh fedvox server process; yields (pid, address)."""
    state = workdir / "state"
    port = free_port()
    settings = {
        "evaluate": "false",
        "poll_timeout_s": "0.5",
        "site_timeout_s": "3600",
        "round_timeout_s": "3600",
        "max_concurrent_uploads": str(cap),
    }
    args = [*server_args(port, state, rounds=1, min_sites=sites, settings=settings), "--insecure"]
    process = spawn("fedvox.server", args, workdir / "server.log")
    address = f"127.0.0.1:{port}"
    try:
        wait_healthy(address, process)
        yield process.pid, address
    except BaseException:
        tail = (workdir / "server.log").read_text(errors="replace")[-3000:]
        print(f"--- tail of the server log ---\n{tail}", file=sys.stderr)
        raise
    finally:
        stop(process)
        shutil.rmtree(state, ignore_errors=True)


def submit(site: Connection, task: Any, kind: pb.PayloadKind, blob: bytes, digest: str) -> Any:
    header = pb.SubmitHeader(
        site_id=site.site_id,
        task_id=task.task_id,
        round=task.round,
        kind=kind,
        num_examples=10,
        metrics={"train_loss": 0.5},
        digest=digest,
        size=len(blob),
        local_steps=1,
    )
    return site.submit(header, blob)


def completed_round(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        status = pb_grpc.AdminServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
        return int(status.completed_round)


_HIGH_WATER = re.compile(r"uploads: (\d+) slot\(s\) held at once")


def buffers_high_water(server_log: Path) -> int:
    return max(map(int, _HIGH_WATER.findall(server_log.read_text(errors="replace"))), default=0)


def one_repeat(blobs: Blobs, n_sites: int, workdir: Path, interval_s: float, cap: int) -> Repeat:
    full_digest, delta_digest = digest_hex(blobs.full), digest_hex(blobs.delta)
    with server(workdir, n_sites, cap) as (pid, address):
        sites = [Connection(address, f"load-{i:03d}", give_up_after_s=60) for i in range(n_sites)]
        try:
            for site in sites:
                site.register(10, {"benchmark": "load"})
            (index, task), *_ = wait_for_tasks(sites, pb.TASK_TYPE_INIT, 1, 300).items()
            reply = submit(sites[index], task, pb.PAYLOAD_KIND_FULL, blobs.full, full_digest)
            if not reply.accepted:
                raise RuntimeError(f"INIT upload refused: {reply}")
            tasks = wait_for_tasks(sites, pb.TASK_TYPE_TRAIN, n_sites, 300)
            time.sleep(0.5)  # let the checkpoint's buffers go before the baseline
            replies: list[Any] = [None] * n_sites
            errors: list[BaseException] = []
            gate = threading.Barrier(n_sites + 1)

            def upload(i: int) -> None:
                gate.wait()
                try:
                    replies[i] = submit(
                        sites[i], tasks[i], pb.PAYLOAD_KIND_DELTA, blobs.delta, delta_digest
                    )
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=upload, args=(i,)) for i in range(n_sites)]
            for thread in threads:
                thread.start()
            with RssSampler(pid, interval_s) as rss:
                baseline = rss.rss()
                gate.wait()
                began = time.perf_counter()
                for thread in threads:
                    thread.join()
                upload_s = time.perf_counter() - began
                peak_upload = rss.mark()
                while completed_round(address) < 1:
                    time.sleep(0.05)
                round_s = time.perf_counter() - began
                peak_round = max(peak_upload, rss.mark())
        finally:
            for site in sites:
                site.close()
    if errors:
        raise RuntimeError(f"{len(errors)} upload(s) failed, e.g. {errors[0]!r}")
    accepted = sum(1 for r in replies if r is not None and r.accepted and not r.duplicate)
    if accepted != n_sites:
        raise RuntimeError(f"only {accepted} of {n_sites} uploads accepted")
    return Repeat(
        upload_seconds=upload_s,
        aggregate_mbps=n_sites * len(blobs.delta) / upload_s / MB,
        rss_baseline_bytes=baseline,
        rss_peak_upload_bytes=peak_upload,
        rss_peak_round_bytes=peak_round,
        round_seconds=round_s,
        accepted=accepted,
        buffers_high_water=buffers_high_water(workdir / "server.log"),
    )


def summarise(repeats: list[Repeat], n_sites: int, size: int) -> dict[str, Any]:
    def median(key: str) -> float:
        return float(statistics.median(getattr(r, key) for r in repeats))

    growth = median("rss_peak_upload_bytes") - median("rss_baseline_bytes")
    return {
        "all_accepted": all(r.accepted == n_sites for r in repeats),
        "upload_seconds": median("upload_seconds"),
        "aggregate_mbps": median("aggregate_mbps"),
        "round_seconds": median("round_seconds"),
        "server_rss_baseline_bytes": median("rss_baseline_bytes"),
        "server_rss_peak_bytes": median("rss_peak_upload_bytes"),
        "server_rss_peak_max_bytes": max(r.rss_peak_upload_bytes for r in repeats),
        "server_rss_peak_through_checkpoint_bytes": median("rss_peak_round_bytes"),
        "server_rss_growth_x_payload": growth / size,
        "buffers_high_water_max": max(r.buffers_high_water for r in repeats),
        "runs": [asdict(r) for r in repeats],
    }


def print_table(results: dict[int, dict[str, Any]], n_sites: int, n_repeats: int) -> None:
    rows = [
        (f"wall time of the {n_sites} uploads (s)", "upload_seconds", 1, "{:.2f}"),
        ("aggregate throughput (MB/s)", "aggregate_mbps", 1, "{:.1f}"),
        ("server RSS before the uploads (MB)", "server_rss_baseline_bytes", MB, "{:.0f}"),
        ("server peak RSS during the uploads (MB)", "server_rss_peak_bytes", MB, "{:.0f}"),
        ("  worst repeat (MB)", "server_rss_peak_max_bytes", MB, "{:.0f}"),
        ("  growth / payload size", "server_rss_growth_x_payload", 1, "{:.1f}"),
        (
            "server peak RSS through the checkpoint (MB)",
            "server_rss_peak_through_checkpoint_bytes",
            MB,
            "{:.0f}",
        ),
        ("upload slots held at once (most)", "buffers_high_water_max", 1, "{:.0f}"),
    ]
    caps = [f"cap {c}" if c else "no cap" for c in results]
    print(f"{'figure (median of ' + str(n_repeats) + ')':<46}" + "".join(f"{c:>12}" for c in caps))
    for label, key, scale, form in rows:
        cells = "".join(f"{form.format(r[key] / scale):>12}" for r in results.values())
        print(f"{label:<46}{cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=50, help="concurrent sites (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh servers (default 3)")
    parser.add_argument(
        "--caps",
        type=int,
        nargs="+",
        default=[0, 4],
        help="max_concurrent_uploads values to compare, 0 = no cap (default: 0 4)",
    )
    parser.add_argument("--sample-ms", type=float, default=10.0, help="RSS sampling interval")
    parser.add_argument("--workdir", type=Path, help="server state and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    blobs = unet_blobs()
    size = len(blobs.delta)
    print(
        f"{args.sites} sites x {size / MB:.1f} MB DELTA ({blobs.parameters:,} float32 in "
        f"{blobs.tensors} tensors), {args.repeats} repeats, caps {args.caps}",
        file=sys.stderr,
    )
    root = Path(args.workdir or tempfile.mkdtemp(prefix="fedvox-load-"))
    repeats: dict[int, list[Repeat]] = {cap: [] for cap in args.caps}
    for r in range(args.repeats):
        shift = r % len(args.caps)  # rotate the order so that no cap always runs first
        for cap in args.caps[shift:] + args.caps[:shift]:
            workdir = root / f"repeat-{r}-cap-{cap}"
            workdir.mkdir(parents=True, exist_ok=True)
            last = one_repeat(blobs, args.sites, workdir, args.sample_ms / 1000, cap)
            repeats[cap].append(last)
            print(
                f"repeat {r + 1}, cap {cap}: {last.accepted}/{args.sites} accepted in "
                f"{last.upload_seconds:.1f}s ({last.aggregate_mbps:.0f} MB/s), server RSS "
                f"{last.rss_baseline_bytes / MB:.0f} -> {last.rss_peak_upload_bytes / MB:.0f} MB "
                f"(uploads), {last.rss_peak_round_bytes / MB:.0f} MB (through the checkpoint), "
                f"{last.buffers_high_water} upload slots at most",
                file=sys.stderr,
            )
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    results = {cap: summarise(runs, args.sites, size) for cap, runs in repeats.items()}
    print_table(results, args.sites, args.repeats)
    print(
        json.dumps(
            {
                "benchmark": "load",
                "sites": args.sites,
                "repeats": args.repeats,
                "payload_bytes": size,
                "parameters": blobs.parameters,
                "by_max_concurrent_uploads": {str(cap): r for cap, r in results.items()},
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
