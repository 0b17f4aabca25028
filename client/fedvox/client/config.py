"""Client settings: defaults < YAML (--config) < FEDVOX_CLIENT_* environment < CLI flags.

Deployment facts (site id, server address, data root) usually come from the
environment, so one image serves every site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fedvox.tls import TlsFiles, resolve
from fedvox.wire.settings import load_settings

ENV_PREFIX = "FEDVOX_CLIENT_"
BYZANTINE_MODES = ("", "scale100", "signflip", "nan")  # see ClientConfig.byzantine


@dataclass(frozen=True)
class ClientConfig:
    site_id: str = ""
    server: str = "localhost:8787"
    data_root: str = "/data"
    state_dir: str = ""  # personal layers, SCAFFOLD's c_i; default ./fedvox-site-state/<site>
    device: str = "auto"  # auto = CUDA when available, else CPU
    threads: int = 0  # torch CPU threads; 0 = torch's default
    connect_timeout_s: float = 600.0  # give up if the server stays unreachable this long
    max_backoff_s: float = 30.0
    poll_timeout_s: float = 30.0
    cache_rate: float = 1.0  # share of volumes MONAI keeps in memory after the first epoch
    # replicas of one scaled service: with no site_id, claim a shard of this pool as site id and
    # data root, recording the claim in claim_dir (shared and writable; see fedvox.client.claim)
    claim_pool: str = ""
    claim_dir: str = ""
    # mutual TLS (docs/security.md): a `fedvox provision` folder (ca.crt, sites/<site_id>.crt
    # and .key), or the three files, which win over the folder's; none needs `insecure`
    tls_dir: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_server_name: str = ""  # expect this name in the server certificate, not the host's
    insecure: bool = False  # plaintext, only for a server started with `insecure`

    # FOR ROBUSTNESS TESTING ONLY: corrupt every uploaded delta ("scale100" multiplies it by 100,
    # "signflip" negates it, "nan" fills it with NaN), to play a Byzantine site; "" = honest
    byzantine: str = ""

    def validate(self) -> None:
        if self.byzantine not in BYZANTINE_MODES:
            raise ValueError(f"byzantine must be one of {BYZANTINE_MODES}, got {self.byzantine!r}")
        if not self.site_id:
            raise ValueError("a site id is required (--site-id or FEDVOX_CLIENT_SITE_ID)")
        if not Path(self.data_root).is_dir():
            raise ValueError(f"data root {self.data_root!r} is not a directory")

    def tls(self) -> TlsFiles | None:
        """This site's certificate files, or None when explicitly insecure; else a ConfigError."""
        return resolve(
            self.site_id,
            tls_dir=self.tls_dir,
            cert=self.tls_cert,
            key=self.tls_key,
            ca=self.tls_ca,
            server_name=self.tls_server_name,
            insecure=self.insecure,
            flags={
                "dir": "--tls-dir / FEDVOX_CLIENT_TLS_DIR",
                "cert": "--tls-cert",
                "key": "--tls-key",
                "ca": "--tls-ca",
                "insecure": "--insecure / FEDVOX_CLIENT_INSECURE=true",
            },
        )


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
    if config.claim_pool and not config.site_id:
        from fedvox.client.claim import claim_shard

        pool = Path(config.claim_pool)
        claim = claim_shard(pool, Path(config.claim_dir) if config.claim_dir else pool / ".claims")
        config = replace(config, site_id=claim.site_id, data_root=str(claim.data_root))
    config.validate()
    return config
