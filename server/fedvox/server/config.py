"""Server settings: defaults < YAML (--config) < FEDVOX_SERVER_* environment < CLI flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvox.tls import SERVER, TlsFiles, resolve
from fedvox.wire.settings import load_settings
from fedvox.wire.taskconfig import ModelSpec, TrainSettings, check_channels

ENV_PREFIX = "FEDVOX_SERVER_"


@dataclass(frozen=True)
class ServerConfig:
    """Every server setting; nested sections are YAML mappings."""

    host: str = "0.0.0.0"
    port: int = 8787
    state_dir: str = "fedvox-state"
    rounds: int = 5
    min_sites: int = 2  # no round starts with fewer live sites
    fraction: float = 1.0  # share of live sites sampled per round
    quorum: float = 0.5  # share of sampled sites whose results must arrive
    round_timeout_s: float = 600.0  # deadline per round; late results are refused
    poll_timeout_s: float = 10.0  # longest a GetTask long-poll is held
    heartbeat_interval_s: float = 5.0
    site_timeout_s: float = 60.0  # silent this long = dead, not waited for
    seed: int = 0
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)  # see `fedvox strategies`
    evaluate: bool = True  # test-split evaluation of the initial and final models
    max_blob_mb: float = 2048.0
    max_chunk_kb: int = 4096
    max_workers: int = 128  # gRPC threads; long-polls and queued uploads hold one each
    # Submits receiving at once, each holding one payload-sized buffer; more queue (0: no cap)
    max_concurrent_uploads: int = 4
    allowed_sites: tuple[str, ...] = ()  # empty = any site id may register
    # mutual TLS (docs/security.md): a `fedvox provision` folder, or the three files (which win
    # over the folder's); without them the server refuses to start unless `insecure` is set
    tls_dir: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure: bool = False  # plaintext, unauthenticated: any caller can act as any site
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        if self.rounds < 0 or self.min_sites < 1:
            raise ValueError("rounds >= 0 and min_sites >= 1 are required")
        if not (0 < self.fraction <= 1 and 0 < self.quorum <= 1):
            raise ValueError("fraction and quorum must lie in (0, 1]")
        if self.round_timeout_s <= 0 or self.poll_timeout_s <= 0 or self.site_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_concurrent_uploads < 0:
            raise ValueError("max_concurrent_uploads must be >= 0 (0: no cap)")
        from fedvox.server.strategies import create

        create(self.strategy, self.strategy_params)  # unknown names and bad values fail here
        self.model.validate()
        self.train.validate()
        check_channels(self.model, self.train)


def server_tls(config: ServerConfig) -> TlsFiles | None:
    """The server's certificate files, or None when explicitly insecure; else a ConfigError."""
    return resolve(
        SERVER,
        tls_dir=config.tls_dir,
        cert=config.tls_cert,
        key=config.tls_key,
        ca=config.tls_ca,
        insecure=config.insecure,
        flags=_TLS_FLAGS,
    )


_TLS_FLAGS = {
    "dir": "--tls-dir / tls_dir",
    "cert": "--tls-cert",
    "key": "--tls-key",
    "ca": "--tls-ca",
    "insecure": "--insecure / insecure: true",
}


def load_server_config(
    yaml_path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    config = load_settings(
        ServerConfig,
        yaml_path=yaml_path,
        env_prefix=ENV_PREFIX,
        environ=environ,
        overrides=overrides,
    )
    config.validate()
    return config
