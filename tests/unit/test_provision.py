"""`fedvox provision` (fedvox.provision) and the TLS settings rules (fedvox.tls): what the
certificates say, file modes, re-running to add a site, and the no-TLS-needs-`insecure` rule."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvox.cli import main
from fedvox.provision import SITE_ID, Authority, issue_site, provision
from fedvox.server.config import ServerConfig, load_server_config, server_tls
from fedvox.server.sites import SITE_ID as SERVER_SITE_ID
from fedvox.tls import (
    ADMIN_CN,
    SERVER,
    SERVER_CN,
    TlsFiles,
    add_cli_arguments,
    files_in,
    resolve,
    tls_from_args,
)
from fedvox.wire.settings import ConfigError


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(c: x509.Certificate) -> str:
    return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def sans(c: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    ]


def usages(c: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    provision(out, ["site-a", "site-b"], server_sans=["localhost", "server", "127.0.0.1"])
    return out


def test_the_certificates_name_their_holders_and_chain_to_the_ca(certs: Path) -> None:
    ca = cert(certs / "ca.crt")
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and ca.subject == ca.issuer
    for site in ("site-a", "site-b"):
        site_cert = cert(files_in(certs, site).cert)
        site_cert.verify_directly_issued_by(ca)
        assert common_name(site_cert) == site
        assert sans(site_cert) == ([site], [])
        assert usages(site_cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server = cert(files_in(certs, SERVER).cert)
    server.verify_directly_issued_by(ca)
    assert common_name(server) == SERVER_CN
    assert sans(server) == (["localhost", "server"], ["127.0.0.1"])
    assert usages(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    admin = cert(files_in(certs, ADMIN_CN).cert)
    admin.verify_directly_issued_by(ca)
    assert common_name(admin) == ADMIN_CN
    assert usages(admin) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_keys_are_private_and_certificates_readable(certs: Path) -> None:
    keys = sorted(certs.rglob("*.key"))
    assert [k.relative_to(certs).as_posix() for k in keys] == [
        "admin.key",
        "ca.key",
        "server.key",
        "sites/site-a.key",
        "sites/site-b.key",
    ]
    assert {mode(k) for k in keys} == {0o600}
    assert {mode(c) for c in certs.rglob("*.crt")} == {0o644}
    assert not list(certs.rglob("*.tmp"))


def test_rerunning_adds_a_site_and_changes_nothing_else(tmp_path: Path) -> None:
    provision(tmp_path, ["site-a", "site-b"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = provision(tmp_path, ["site-a", "site-b", "site-c"])
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # the CA and every old certificate and key
    assert sorted(set(after) - set(before)) == [
        tmp_path / "sites/site-c.crt",
        tmp_path / "sites/site-c.key",
    ]
    cert(tmp_path / "sites/site-c.crt").verify_directly_issued_by(cert(tmp_path / "ca.crt"))
    assert any("issued" in line and "site-c" in line for line in done)
    assert any(line.startswith("kept") and "site-a" in line for line in done)


def test_force_reissues_only_the_named_certificates_and_never_the_ca(tmp_path: Path) -> None:
    provision(tmp_path, ["site-a", "site-b"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def changed() -> list[str]:
        return sorted(p.name for p, data in before.items() if p.read_bytes() != data)

    provision(tmp_path, ["site-a"], force=True)
    assert changed() == ["site-a.crt", "site-a.key"]
    assert mode(tmp_path / "sites/site-a.key") == 0o600
    provision(tmp_path, [], force=True, admin=True, server_sans=["localhost"])
    assert changed() == [
        "admin.crt",
        "admin.key",
        "server.crt",
        "server.key",
        "site-a.crt",
        "site-a.key",
    ]
    assert "ca.crt" not in changed() and "ca.key" not in changed()


def test_other_server_names_need_force(tmp_path: Path) -> None:
    provision(tmp_path, [], server_sans=["localhost"])
    provision(tmp_path, [], server_sans=["localhost"])  # the same names: fine
    with pytest.raises(ConfigError, match=r"server\.crt exists for localhost.*--force"):
        provision(tmp_path, [], server_sans=["fedvox.example.org", "10.0.0.5"])
    provision(tmp_path, [], server_sans=["fedvox.example.org", "10.0.0.5"], force=True)
    assert sans(cert(tmp_path / "server.crt")) == (
        ["fedvox.example.org"],
        [str(ipaddress.ip_address("10.0.0.5"))],
    )


@pytest.mark.parametrize("site", ["admin", "server", "fedvox-server", "Site-A", "-x", "a/b", ""])
def test_reserved_and_malformed_site_ids_are_refused(tmp_path: Path, site: str) -> None:
    with pytest.raises(ConfigError, match=r"site id|reserved"):
        provision(tmp_path, [site])
    assert not (tmp_path / "ca.crt").exists()  # checked before anything is written


def test_site_ids_follow_the_server() -> None:
    assert SITE_ID.pattern == SERVER_SITE_ID.pattern


def test_a_half_written_pair_is_reported(tmp_path: Path) -> None:
    provision(tmp_path, ["site-a"])
    (tmp_path / "sites/site-a.key").unlink()
    with pytest.raises(ConfigError, match="only one of"):
        provision(tmp_path, ["site-a"])


def test_the_cli_provisions_and_extends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert main(["provision", "--out", str(out), "--sites", "site-a", "--days", "30"]) == 0
    assert "created the CA" in capsys.readouterr().out
    site_a = cert(out / "sites/site-a.crt")
    assert site_a.not_valid_after_utc - site_a.not_valid_before_utc < dt.timedelta(days=31)
    assert main(["provision", "--out", str(out), "--sites", "site-a,site-b"]) == 0
    printed = capsys.readouterr().out
    assert "kept the CA" in printed and "issued" in printed and "site-b" in printed
    assert main(["provision", "--out", str(out), "--sites", "admin"]) == 2
    assert "reserved" in capsys.readouterr().err
    data = tmp_path / "data"
    for site in ("site-a", "site-c", "pool/shard-00", "pool/shard-01"):
        (data / site).mkdir(parents=True)
        (data / site / "dataset.json").write_text("{}")
    argv = ["provision", "--out", str(out), "--sites-from", str(data)]
    assert main([*argv, "--sites-from", str(data / "pool")]) == 0
    assert sorted(p.stem for p in (out / "sites").glob("*.crt")) == [
        "shard-00",
        "shard-01",
        "site-a",
        "site-b",
        "site-c",
    ]


def test_tls_files_are_checked_when_read(tmp_path: Path) -> None:
    provision(tmp_path, ["site-a", "site-b"])
    now = dt.datetime.now(dt.UTC)
    issue_site(tmp_path, "site-old", not_before=now - dt.timedelta(days=3), not_after=now)
    with pytest.raises(ConfigError, match=r"site-old\.crt expired"):
        files_in(tmp_path, "site-old").read()
    a, b = files_in(tmp_path, "site-a"), files_in(tmp_path, "site-b")
    with pytest.raises(ConfigError, match=r"site-b\.key is not the private key of .*site-a\.crt"):
        TlsFiles(a.ca, a.cert, b.key).read()
    with pytest.raises(ConfigError, match="cannot read the CA certificate"):
        TlsFiles(tmp_path / "nope.crt", a.cert, a.key).read()
    assert a.read()[1] == a.cert.read_bytes()


def test_a_new_ca_is_valid_for_its_days() -> None:
    authority = Authority.create(days=10)
    assert authority.cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=10)


# ---- settings: TLS, or an explicit `insecure` ----


def test_no_tls_settings_need_insecure() -> None:
    with pytest.raises(ConfigError, match=r"no TLS settings.*--insecure"):
        server_tls(ServerConfig())
    assert server_tls(ServerConfig(insecure=True)) is None
    with pytest.raises(ConfigError, match="contradicts"):
        server_tls(ServerConfig(insecure=True, tls_dir="/certs"))
    with pytest.raises(ConfigError, match="tls_key, tls_ca missing"):
        resolve(SERVER, cert="/c/server.crt")


def test_folder_and_files() -> None:
    assert server_tls(ServerConfig(tls_dir="/certs")) == TlsFiles(
        Path("/certs/ca.crt"), Path("/certs/server.crt"), Path("/certs/server.key")
    )
    assert resolve("site-a", tls_dir="/certs", key="/secret/a.key") == TlsFiles(
        Path("/certs/ca.crt"), Path("/certs/sites/site-a.crt"), Path("/secret/a.key")
    )
    assert resolve("site-a", cert="a.crt", key="a.key", ca="ca.crt", server_name="srv") == (
        TlsFiles(Path("ca.crt"), Path("a.crt"), Path("a.key"), "srv")
    )


def test_server_tls_from_the_environment() -> None:
    config = load_server_config(None, None, {"FEDVOX_SERVER_TLS_DIR": "/certs"})
    assert server_tls(config) == files_in(Path("/certs"), SERVER)
    config = load_server_config(None, None, {"FEDVOX_SERVER_INSECURE": "true"})
    assert config.insecure and server_tls(config) is None


def test_the_server_refuses_to_start_without_tls_or_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["server", "--port", "0", "--state-dir", str(state)]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert not state.exists()  # refused before anything was written


def operator_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return parser.parse_args(list(argv))


def test_operator_flags_then_environment() -> None:
    admin = files_in(Path("/certs"), ADMIN_CN)
    assert tls_from_args(operator_args("--tls-dir", "/certs"), environ={}) == admin
    assert tls_from_args(operator_args("--certs", "/certs"), environ={}) == admin
    assert tls_from_args(operator_args(), environ={"FEDVOX_TLS_DIR": "/certs"}) == admin
    # flags replace the environment as a whole
    env = {"FEDVOX_TLS_DIR": "/certs"}
    assert tls_from_args(operator_args("--insecure"), environ=env) is None
    assert tls_from_args(operator_args(), environ={"FEDVOX_INSECURE": "1"}) is None
    with pytest.raises(ConfigError, match=r"no TLS settings.*--tls-dir.*--insecure"):
        tls_from_args(operator_args(), environ={})
    with pytest.raises(ConfigError, match="--insecure contradicts"):
        tls_from_args(operator_args("--insecure", "--tls-dir", "/certs"), environ={})
