"""Mutual TLS: where `fedvox provision` puts the certificates, and the gRPC credentials built
from them for the server, the sites and the operator CLI (see docs/security.md).

A provisioned folder holds:

    ca.crt  ca.key            the federation's certificate authority (keep ca.key offline)
    server.crt  server.key    the server, with its DNS and IP subject alternative names
    admin.crt  admin.key      the operator (CN "admin"): `fedvox status`, `fedvox download`
    sites/<site>.crt  .key    one per site, CN = the site id

Every party trusts ca.crt only. The server requires a client certificate and takes the caller's
identity from its common name; nothing else a client says about itself is believed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedvox.wire.settings import ConfigError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SITES_DIR = "sites"
SERVER = "server"  # the identity name of the server's files (its CN is SERVER_CN)
SERVER_CN = "fedvox-server"
ADMIN_CN = "admin"  # the operator: may call AdminService, may not act as a site
RESERVED_NAMES = frozenset({SERVER, SERVER_CN, ADMIN_CN, "ca"})  # never site ids
NO_TLS_HINT = (
    "give a certificate folder from `fedvox provision` ({dir_flag}) or the three files "
    "({file_flags}), or run without TLS with {insecure_flag}"
)


@dataclass(frozen=True)
class TlsFiles:
    """One party's certificate and key, and the CA certificate it trusts."""

    ca: Path
    cert: Path
    key: Path
    server_name: str = ""  # client side: the name to expect in the server certificate, if not
    # the host of the address (ssl_target_name_override); usually left empty

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes, checked: a missing or unreadable file, a key that is not
        the certificate's, or a certificate outside its validity is a ConfigError naming it."""
        ca = _read(self.ca, "CA certificate")
        cert, key = _read(self.cert, "certificate"), _read(self.key, "private key")
        check_pair(cert, key, self.cert, self.key)
        return ca, cert, key

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: a client certificate signed by the CA is required (mutual TLS)."""
        ca, cert, key = self.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def files_in(tls_dir: Path, identity: str) -> TlsFiles:
    """The files of `identity` ("server", "admin" or a site id) in a provisioned folder."""
    if identity in (SERVER, ADMIN_CN):
        cert = tls_dir / f"{identity}.crt"
    else:
        cert = tls_dir / SITES_DIR / f"{identity}.crt"
    return TlsFiles(tls_dir / CA_CERT, cert, cert.with_suffix(".key"))


def resolve(
    identity: str,
    *,
    tls_dir: str = "",
    cert: str = "",
    key: str = "",
    ca: str = "",
    server_name: str = "",
    insecure: bool = False,
    flags: Mapping[str, str] | None = None,
) -> TlsFiles | None:
    """The TLS files from settings, or None for an explicitly insecure (plaintext) party.

    Explicit files win over the folder's. No TLS at all needs `insecure`, and `insecure` with
    TLS settings is a contradiction: both are ConfigErrors whose message names the settings
    (`flags` maps dir/cert/key/ca/insecure to how the caller spells them).
    """
    names = {
        "dir": "tls_dir",
        "cert": "tls_cert",
        "key": "tls_key",
        "ca": "tls_ca",
        "insecure": "insecure",
        **(flags or {}),
    }
    given = {k: v for k, v in (("cert", cert), ("key", key), ("ca", ca)) if v}
    if insecure:
        if tls_dir or given:
            raise ConfigError(
                f"{names['insecure']} contradicts the TLS settings "
                f"({', '.join(names[k] for k in (['dir'] if tls_dir else []) + list(given))})"
            )
        return None
    if not tls_dir and not given:
        raise ConfigError(
            "no TLS settings: "
            + NO_TLS_HINT.format(
                dir_flag=names["dir"],
                file_flags=", ".join(names[k] for k in ("cert", "key", "ca")),
                insecure_flag=names["insecure"],
            )
        )
    if not tls_dir and len(given) < 3:
        missing = [names[k] for k in ("cert", "key", "ca") if k not in given]
        raise ConfigError(f"{', '.join(missing)} missing: the TLS files go together")
    if not tls_dir:
        return TlsFiles(Path(ca), Path(cert), Path(key), server_name)
    base = files_in(Path(tls_dir), identity)
    return TlsFiles(
        Path(ca) if ca else base.ca,
        Path(cert) if cert else base.cert,
        Path(key) if key else base.key,
        server_name,
    )


def open_channel(
    address: str, tls: TlsFiles | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to `address`: mutual TLS with `tls`, plaintext when it is None."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(
        address, tls.channel_credentials(), options=[*options, *tls.channel_options()]
    )


# operator commands (`fedvox status`, `download`, `health`): flags, with environment defaults so
# that e.g. `docker compose exec server fedvox status` needs none
ENV_DIR, ENV_INSECURE = "FEDVOX_TLS_DIR", "FEDVOX_INSECURE"
_CLI_FLAGS = {
    "dir": "--tls-dir",
    "cert": "--tls-cert",
    "key": "--tls-key",
    "ca": "--tls-ca",
    "insecure": "--insecure",
}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls-dir (or --tls-cert/--tls-key/--tls-ca), --tls-server-name and --insecure."""
    group = parser.add_argument_group(
        "TLS", f"the operator certificate; defaults from ${ENV_DIR} and FEDVOX_TLS_* variables"
    )
    group.add_argument(
        "--tls-dir",
        "--certs",
        dest="tls_dir",
        metavar="DIR",
        help=f"a `fedvox provision` folder: uses ca.crt and admin.crt/.key (${ENV_DIR})",
    )
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate ($FEDVOX_TLS_CERT)")
    group.add_argument("--tls-key", metavar="PEM", help="its private key ($FEDVOX_TLS_KEY)")
    group.add_argument("--tls-ca", metavar="PEM", help="the CA certificate ($FEDVOX_TLS_CA)")
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="expect this name in the server certificate instead of the address's host",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help=f"plaintext, for a server started with --insecure (${ENV_INSECURE}=1)",
    )


def tls_from_args(
    args: argparse.Namespace,
    identity: str = ADMIN_CN,
    environ: Mapping[str, str] | None = None,
) -> TlsFiles | None:
    """The operator's TLS files from add_cli_arguments' flags, then the environment."""
    env = os.environ if environ is None else environ
    names = ("dir", "cert", "key", "ca")
    if args.insecure or any(getattr(args, f"tls_{n}") for n in names):
        values = {n: str(getattr(args, f"tls_{n}") or "") for n in names}  # flags replace env
        insecure = bool(args.insecure)
    else:
        values = {n: env.get(f"FEDVOX_TLS_{n.upper()}", "") for n in names}
        insecure = env.get(ENV_INSECURE, "").strip().lower() in ("1", "true", "yes", "on")
    return resolve(
        identity,
        tls_dir=values["dir"],
        cert=values["cert"],
        key=values["key"],
        ca=values["ca"],
        server_name=args.tls_server_name or env.get("FEDVOX_TLS_SERVER_NAME", ""),
        insecure=insecure,
        flags=_CLI_FLAGS,
    )


def check_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> None:
    """The key belongs to the certificate, which is valid now (ConfigErrors name the files)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ConfigError(f"{cert_path} is not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ConfigError(f"{key_path} is not the private key of {cert_path}")
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise ConfigError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"{cert_path} is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(is this machine's clock right?)"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
