"""Client settings: defaults < YAML (--config) < FEDVOX_CLIENT_* environment < CLI flags.

Deployment facts (site id, server address, data root) usually come from the
environment, so one image serves every site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedvox.wire.settings import load_settings

ENV_PREFIX = "FEDVOX_CLIENT_"


@dataclass(frozen=True)
class ClientConfig:
    site_id: str = ""
    server: str = "localhost:8787"
    data_root: str = "/data"
    state_dir: str = ""  # what persists at the site between runs; default <data_root>/.. unused
    device: str = "auto"  # auto = CUDA when available, else CPU
    threads: int = 0  # torch CPU threads; 0 = torch's default
    connect_timeout_s: float = 600.0  # give up if the server stays unreachable this long
    max_backoff_s: float = 30.0
    poll_timeout_s: float = 30.0
    cache_rate: float = 1.0  # share of volumes MONAI keeps in memory after the first epoch

    def validate(self) -> None:
        if not self.site_id:
            raise ValueError("a site id is required (--site-id or FEDVOX_CLIENT_SITE_ID)")
        if not Path(self.data_root).is_dir():
            raise ValueError(f"data root {self.data_root!r} is not a directory")


def load_client_config(
    yaml_path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    config = load_settings(
        ClientConfig,
        yaml_path=yaml_path,
        env_prefix=ENV_PREFIX,
        environ=environ,
        overrides=overrides,
    )
    config.validate()
    return config
