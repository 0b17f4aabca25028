"""`fedvox provision --out DIR --sites site-a,site-b`: the federation's certificate authority,
the server's certificate, the operator's and one per site (layout: fedvox.tls).

Running it again on the same folder keeps the CA and every certificate already there and issues
only what is missing: that is how a site joins a running federation (the server trusts the CA,
not a list of certificates, so it needs no restart). `--force` reissues what the command names:
the sites of --sites, the server's with --server-san, the operator's with --admin; never the CA
(delete the folder to start a new federation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvox.tls import (
    ADMIN_CN,
    CA_CERT,
    CA_KEY,
    RESERVED_NAMES,
    SERVER,
    SERVER_CN,
    SITES_DIR,
    files_in,
)
from fedvox.wire.settings import ConfigError

# what the server accepts as a site id (fedvox.server.sites.SITE_ID)
SITE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_SERVER_SANS = ("localhost", "server", "127.0.0.1")
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from a little before now


@dataclass(frozen=True)
class Authority:
    """The CA: it signs every certificate of one federation."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, days: int = 3650, common_name: str = "fedvox CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedvox"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, folder: Path) -> Authority:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{folder / CA_KEY} is not an EC key made by `fedvox provision`")
        return cls(cert, key)

    def save(self, folder: Path) -> None:
        _write_pair(folder / CA_CERT, folder / CA_KEY, self.cert, self.key)

    def issue(
        self,
        common_name: str,
        *,
        server: bool,
        names: Sequence[str] = (),
        days: int = 365,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf certificate and its new key: for TLS servers (`server`) or clients only.

        `names` become subject alternative names (IP addresses as such, the rest as DNS).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start = not_before or now - CLOCK_SKEW
        end = not_after or now + dt.timedelta(days=days)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        public = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedvox"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key


def check_site_id(site_id: str) -> None:
    if not SITE_ID.match(site_id):
        raise ConfigError(f"site id {site_id!r} must match {SITE_ID.pattern}")
    if site_id in RESERVED_NAMES:
        raise ConfigError(f"{site_id!r} is reserved and cannot be a site id")


def load_or_create_authority(folder: Path, days: int = 3650) -> tuple[Authority, bool]:
    """The folder's CA, or a new one saved there; True when it was created."""
    cert, key = folder / CA_CERT, folder / CA_KEY
    if cert.exists() or key.exists():
        if not (cert.exists() and key.exists()):
            raise ConfigError(f"{folder} holds only one of {CA_CERT} and {CA_KEY}")
        return Authority.load(folder), False
    authority = Authority.create(days)
    authority.save(folder)
    return authority, True


def issue_site(
    folder: Path,
    site_id: str,
    *,
    days: int = 365,
    force: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> bool:
    """A certificate for `site_id` (CN and DNS name) signed by the folder's CA.

    Keeps an existing one unless `force`; returns True when it issued one.
    """
    check_site_id(site_id)
    files = files_in(folder, site_id)
    if _exists(files.cert, files.key) and not force:
        return False
    authority = Authority.load(folder)
    cert, key = authority.issue(
        site_id,
        server=False,
        names=[site_id],
        days=days,
        not_before=not_before,
        not_after=not_after,
    )
    _write_pair(files.cert, files.key, cert, key)
    return True


def provision(
    folder: Path,
    sites: Sequence[str],
    *,
    server_sans: Sequence[str] | None = None,
    days: int = 365,
    ca_days: int = 3650,
    force: bool = False,
    admin: bool = False,
) -> list[str]:
    """Make what is missing of the federation's certificates; lines saying what was done.

    `server_sans` None means the default names for a new server certificate, and no check of an
    existing one; given names that differ from an existing certificate's need `force`. With
    `force`, the named certificates are reissued: `sites`, the server's if `server_sans` is
    given, the operator's if `admin`.
    """
    for site in sites:
        check_site_id(site)
    if days < 1 or ca_days < 1:
        raise ConfigError("--days and --ca-days must be >= 1")
    folder.mkdir(parents=True, exist_ok=True)
    authority, created = load_or_create_authority(folder, ca_days)
    done = [f"{'created' if created else 'kept'} the CA {folder / CA_CERT}"]

    wanted = list(server_sans) if server_sans is not None else list(DEFAULT_SERVER_SANS)
    server = files_in(folder, SERVER)
    if _exists(server.cert, server.key) and not (force and server_sans is not None):
        existing = _sans(x509.load_pem_x509_certificate(server.cert.read_bytes()))
        if server_sans is not None and sorted(existing) != sorted(_normalise(wanted)):
            raise ConfigError(
                f"{server.cert} exists for {', '.join(existing)}, not {', '.join(wanted)}: "
                "pass --force to reissue it (the sites keep theirs: they trust the CA)"
            )
        done.append(f"kept {server.cert} ({', '.join(existing)})")
    else:
        if not wanted:
            raise ConfigError("the server certificate needs at least one --server-san")
        cert, key = authority.issue(SERVER_CN, server=True, names=wanted, days=days)
        _write_pair(server.cert, server.key, cert, key)
        done.append(f"issued {server.cert} for {', '.join(wanted)}")

    admin_files = files_in(folder, ADMIN_CN)
    if _exists(admin_files.cert, admin_files.key) and not (force and admin):
        done.append(f"kept {admin_files.cert}")
    else:
        cert, key = authority.issue(ADMIN_CN, server=False, days=days)
        _write_pair(admin_files.cert, admin_files.key, cert, key)
        done.append(f"issued {admin_files.cert} (operator, CN {ADMIN_CN})")

    for site in sites:
        path = files_in(folder, site).cert
        if issue_site(folder, site, days=days, force=force):
            done.append(f"issued {path} (site {site})")
        else:
            done.append(f"kept {path}")
    return done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the certificate folder")
    parser.add_argument(
        "--sites", default="", help="comma-separated site ids, e.g. site-a,site-b (CN = site id)"
    )
    parser.add_argument(
        "--sites-from",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also a site per subfolder of DIR that holds a dataset.json (repeatable)",
    )
    parser.add_argument(
        "--server-san",
        help="comma-separated DNS names and IP addresses of the server "
        f"(default for a new certificate: {','.join(DEFAULT_SERVER_SANS)})",
    )
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates")
    parser.add_argument("--ca-days", type=int, default=3650, help="validity of a new CA")
    parser.add_argument(
        "--admin",
        action="store_true",
        help="name the operator certificate (always issued when missing), for --force",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reissue the named certificates: --sites, the server's with --server-san, the "
        "operator's with --admin (never the CA)",
    )


def run(args: argparse.Namespace) -> int:
    sites = _split(args.sites)
    sites += [s for folder in args.sites_from for s in site_folders(folder) if s not in sites]
    sans = _split(args.server_san) if args.server_san is not None else None
    for line in provision(
        args.out,
        sites,
        server_sans=sans,
        days=args.days,
        ca_days=args.ca_days,
        force=args.force,
        admin=args.admin,
    ):
        print(line)
    print(
        f"ship each site {args.out / CA_CERT} and its own {SITES_DIR}/<site>.crt/.key only; "
        f"keep {args.out / CA_KEY} with whoever adds sites"
    )
    return 0


def site_folders(folder: Path) -> list[str]:
    """The names of `folder`'s site folders (those with a dataset.json), in order."""
    if not folder.is_dir():
        raise ConfigError(f"--sites-from {folder} is not a directory")
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "dataset.json").is_file()
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _normalise(names: Sequence[str]) -> list[str]:
    return [str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = ext.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def _exists(cert: Path, key: Path) -> bool:
    if cert.exists() != key.exists():
        raise ConfigError(f"only one of {cert} and {key} exists: remove it or pass --force")
    return cert.exists()


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """The key (0600) first, then the certificate (0644), each written whole and renamed."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
