"""`fedvox status` and `fedvox download`: operator calls to a running server's AdminService."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from fedvox.tls import TlsFiles, add_cli_arguments, open_channel, tls_from_args
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.digest import hasher


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="localhost:8787", help="HOST:PORT of the server")
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    add_cli_arguments(parser)


def get_status(
    address: str, timeout: float = 10.0, tls: TlsFiles | None = None
) -> pb.GetStatusResponse:
    """The server's status; `tls` is the operator's certificate (None: plaintext)."""
    with open_channel(address, tls) as channel:
        return pb_grpc.AdminServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=timeout)


def status_dict(status: pb.GetStatusResponse) -> dict[str, Any]:
    return MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def format_status(status: pb.GetStatusResponse) -> str:
    lines = [
        f"federation {status.federation_id}  phase {status.phase}  strategy {status.strategy}",
        f"round {status.completed_round}/{status.total_rounds} complete",
    ]
    if status.current_round or status.current_expected:
        lines.append(
            f"in progress: round {status.current_round}, "
            f"{status.current_results}/{status.current_expected} results"
        )
    now = time.time()
    lines.append(f"{'site':<14}{'alive':<7}{'seen':>7}  {'examples':>8}  {'progress':>8}  metrics")
    for site in status.sites:
        metrics = " ".join(f"{k}={v:.3f}" for k, v in sorted(site.last_metrics.items()))
        lines.append(
            f"{site.site_id:<14}{'yes' if site.alive else 'NO':<7}"
            f"{now - site.last_seen_unix:>6.0f}s  {site.num_examples:>8}  "
            f"{site.progress:>7.0%}  {metrics}"
        )
    lines += [
        f"data {s.site_id}: {format_site_data(dict(s.info))}"
        for s in status.sites
        if "data_summary" in s.info or "data_error" in s.info
    ]
    for summary in status.history:
        means = " ".join(
            f"{k[5:]}={v:.3f}" for k, v in sorted(summary.metrics.items()) if k.startswith("mean/")
        )
        lines.append(
            f"round {summary.round:>3} {summary.kind:<9} {len(summary.sites)} site(s) "
            f"{summary.duration_seconds:6.1f}s  {means}"
        )
    return "\n".join(lines)


def format_site_data(info: dict[str, str]) -> str:
    """One line from the data summary a site sent at registration (see fedvox.client.checks)."""
    try:
        summary = json.loads(info.get("data_summary", "{}"))
    except json.JSONDecodeError:
        summary = {}
    parts = []
    if "cases" in summary:
        parts.append("/".join(str(n) for n in summary["cases"].values()) + " cases (tr/val/test)")
    if "shape" in summary:
        parts.append("shape " + _span(summary["shape"], "{:g}"))
        parts.append("spacing " + _span(summary["spacing_mm"], "{:.2f}") + " mm")
        parts.append(" ".join(f"{k} {n}" for k, n in summary["orientation"].items()))
        hu = summary["hu"]
        parts.append(f"head HU p5/50/95 {hu['p5']:.0f}/{hu['p50']:.0f}/{hu['p95']:.0f}")
        parts.append("labels " + ",".join(str(v) for v in summary["labels"]))
        parts.append(
            f"lesions in {summary['lesion_cases']} (median {summary['lesion_ml_median']:g} ml)"
        )
    if "data_error" in info:
        parts.append("ERROR " + info["data_error"])
    return ", ".join(parts) or "no data summary"


def _span(bounds: dict[str, list[float]], fmt: str) -> str:
    """[min] and [max] per axis as 48x52-60x32: a range only where the cases differ."""
    return "x".join(
        fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"
        for lo, hi in zip(bounds["min"], bounds["max"], strict=True)
    )


def run(args: argparse.Namespace) -> int:
    try:
        status = get_status(args.server, args.timeout, tls_from_args(args))
    except grpc.RpcError as exc:
        print(
            f"fedvox status: cannot reach {args.server}: {exc.code().name} {exc.details()}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(status_dict(status), indent=2) if args.json else format_status(status))
    return 0


def download_model(
    address: str, out: Path, timeout: float = 600.0, tls: TlsFiles | None = None
) -> str:
    """Stream the current global model into `out` (atomically) and return its digest."""
    tmp = out.with_name(out.name + ".part")
    digest = hasher()
    with open_channel(address, tls) as channel, open(tmp, "wb") as f:
        stub = pb_grpc.AdminServiceStub(channel)
        for chunk in stub.DownloadModel(pb.DownloadModelRequest(offset=0), timeout=timeout):
            if chunk.offset != f.tell():
                raise OSError(f"chunk at offset {chunk.offset}, expected {f.tell()}")
            data = chunk.data  # each read of a bytes field copies it (upb)
            f.write(data)
            digest.update(data)
    tmp.replace(out)
    return digest.hexdigest()
