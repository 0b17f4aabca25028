"""Assembles and runs the server: gRPC services, health, reflection, orchestrator thread."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedvox.server.blas import limit_blas_threads
from fedvox.server.config import ServerConfig, server_tls
from fedvox.server.memory import tune_malloc
from fedvox.server.orchestrator import Orchestrator
from fedvox.server.service import AdminService, ChunkMessages, FederationService
from fedvox.server.store import Store
from fedvox.server.strategies import create
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
_STREAM_WINDOW = 1024 * 1024
_SERVICES = [
    pb.DESCRIPTOR.services_by_name[n].full_name for n in ("FederationService", "AdminService")
]


@dataclass
class RunningServer:
    server: grpc.Server
    orchestrator: Orchestrator
    port: int
    loop: threading.Thread

    def stop(self, grace: float = 5.0) -> None:
        self.orchestrator.stop()
        self.server.stop(grace).wait()
        self.loop.join(timeout=grace)


def start(config: ServerConfig) -> RunningServer:
    config.validate()
    tls = server_tls(config)  # before anything else: no TLS settings and no `insecure` = refused
    credentials = tls.server_credentials() if tls is not None else None
    store = Store(Path(config.state_dir))
    orchestrator = Orchestrator(config, store, create(config.strategy, config.strategy_params))
    max_chunk = config.max_chunk_kb * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[ChunkMessages()],
        options=[
            ("grpc.max_receive_message_length", max_chunk + 64 * 1024),
            ("grpc.so_reuseport", 0),
            # a fixed 1 MiB receive window per stream instead of one that grows with the
            # measured bandwidth-delay product: an upload queued for a slot
            # (max_concurrent_uploads) then holds about a window in gRPC's buffers, not many
            # MB, and 1 MiB per round trip still outruns a site's uplink at 50 ms
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", _STREAM_WINDOW),
            # ping every connection with a call in flight, so that an upload whose site
            # vanished without closing its connection ends (and frees its place among
            # max_concurrent_uploads) within about 40 s; an uploading server sends no data
            # frames, hence no limit on pings without data
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.ping_timeout_ms", 10_000),  # what grpcio 1.85 waits for the ack
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    pb_grpc.add_FederationServiceServicer_to_server(
        FederationService(
            orchestrator, config.heartbeat_interval_s, max_chunk, config.max_concurrent_uploads
        ),
        server,
    )
    pb_grpc.add_AdminServiceServicer_to_server(AdminService(orchestrator), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *_SERVICES]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{config.host}:{config.port}"
    if credentials is None:
        log.warning(
            "server: TLS is off (insecure): traffic is unencrypted and unauthenticated, and any "
            "caller can act as any site or as the operator; see docs/security.md"
        )
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    server.start()
    loop = threading.Thread(target=orchestrator.run, name="orchestrator", daemon=True)
    loop.start()
    log.info(
        "server: listening on %s:%d (%s), strategy %s, state in %s",
        config.host,
        port,
        "plaintext" if tls is None else f"mutual TLS, clients of {tls.ca}",
        config.strategy,
        config.state_dir,
    )
    return RunningServer(server, orchestrator, port, loop)


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully (Docker sends SIGTERM)."""
    tune_malloc()  # before the gRPC threads exist
    limit_blas_threads()
    running = start(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("server: signal %d, shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    running.stop()
