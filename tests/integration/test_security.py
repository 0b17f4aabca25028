"""Mutual TLS against a real server on loopback, with certificates from `fedvox provision` made
in a temporary folder: a site's identity is its certificate's, so it cannot act as another
site; only the operator's certificate may call AdminService; unknown, expired or missing
certificates never get past the handshake; a site provisioned later joins without a restart."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedvox.admin import download_model, get_status
from fedvox.cli import main
from fedvox.client.connection import Connection
from fedvox.health import check
from fedvox.provision import issue_site, provision
from fedvox.server.app import RunningServer, start
from fedvox.server.config import ServerConfig
from fedvox.tls import ADMIN_CN, SERVER, TlsFiles, files_in, open_channel
from fedvox.v1 import federation_pb2 as pb
from fedvox.v1 import federation_pb2_grpc as pb_grpc
from fedvox.wire.settings import ConfigError
from fedvox.wire.tensors import to_safetensors
from tests.helpers import INITIAL, RPC_TIMEOUT, blake3_hex, messages, rpc_error, wait_for_task

pytestmark = pytest.mark.integration


@dataclass
class Secured:
    """A mutual-TLS server past round 0 (site-a uploaded the initial model), in round 1."""

    running: RunningServer
    certs: Path
    other_ca: Path  # a second federation's certificates
    address: str
    blob: bytes  # the global model
    task: pb.Task  # site-a's round-1 task

    def channel(self, who: str | TlsFiles) -> grpc.Channel:
        files = files_in(self.certs, who) if isinstance(who, str) else who
        return open_channel(self.address, files)

    def fed(self, who: str | TlsFiles) -> pb_grpc.FederationServiceStub:
        return pb_grpc.FederationServiceStub(self.channel(who))

    def admin(self, who: str | TlsFiles) -> pb_grpc.AdminServiceStub:
        return pb_grpc.AdminServiceStub(self.channel(who))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("security")
    certs, other = root / "certs", root / "other-ca"
    provision(certs, ["site-a", "site-b"], server_sans=["localhost", "127.0.0.1"])
    provision(other, ["site-a"])
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        state_dir=str(root / "state"),
        min_sites=1,
        rounds=1,
        evaluate=False,
        round_timeout_s=60,
        poll_timeout_s=2,
        tls_dir=str(certs),
    )
    running = start(config)
    address = f"127.0.0.1:{running.port}"
    try:
        fed = pb_grpc.FederationServiceStub(open_channel(address, files_in(certs, "site-a")))
        fed.Register(pb.RegisterRequest(site_id="site-a", num_examples=3), timeout=RPC_TIMEOUT)
        init = wait_for_task(fed, "site-a")
        assert init.type == pb.TASK_TYPE_INIT
        blob = to_safetensors(INITIAL)
        header = pb.SubmitHeader(
            site_id="site-a",
            task_id=init.task_id,
            round=init.round,
            kind=pb.PAYLOAD_KIND_FULL,
            digest=blake3_hex(blob),
            size=len(blob),
        )
        assert fed.Submit(iter(messages(header, blob)), timeout=RPC_TIMEOUT).accepted
        task = wait_for_task(fed, "site-a")
        assert task.type == pb.TASK_TYPE_TRAIN
        yield Secured(running, certs, other, address, blob, task)
    finally:
        running.stop(0)


def test_a_site_does_the_protocol_under_its_own_name(secured: Secured) -> None:
    fed = secured.fed("site-a")
    request = pb.DownloadRequest(site_id="site-a", digest=secured.task.global_digest)
    data = b"".join(c.data for c in fed.Download(request, timeout=RPC_TIMEOUT))
    assert blake3_hex(data) == secured.task.global_digest
    beat = pb.HeartbeatRequest(site_id="site-a", task_id=secured.task.task_id, progress=0.5)
    assert not fed.Heartbeat(beat, timeout=RPC_TIMEOUT).abort
    # the client library, as `fedvox client` uses it
    connection = Connection(
        secured.address, "site-b", give_up_after_s=5, tls=files_in(secured.certs, "site-b")
    )
    try:
        reply = connection.register(4, {})
        assert (
            reply.federation_id
            == get_status(secured.address, tls=files_in(secured.certs, ADMIN_CN)).federation_id
        )
    finally:
        connection.close()


def impersonations(secured: Secured) -> dict[str, object]:
    """Each site RPC made with site-a's certificate in site-b's name (lazily: callables)."""
    fed = secured.fed("site-a")
    header = pb.SubmitHeader(
        site_id="site-b",
        task_id=secured.task.task_id,
        round=secured.task.round,
        kind=pb.PAYLOAD_KIND_DELTA,
        num_examples=1,
        digest=blake3_hex(secured.blob),
        size=len(secured.blob),
    )
    timeout = RPC_TIMEOUT
    return {
        "Register": lambda: fed.Register(pb.RegisterRequest(site_id="site-b"), timeout=timeout),
        "GetTask": lambda: fed.GetTask(pb.GetTaskRequest(site_id="site-b"), timeout=timeout),
        "Submit": lambda: fed.Submit(iter(messages(header, secured.blob)), timeout=timeout),
        "Download": lambda: list(
            fed.Download(
                pb.DownloadRequest(site_id="site-b", digest=secured.task.global_digest),
                timeout=timeout,
            )
        ),
        "Heartbeat": lambda: fed.Heartbeat(
            pb.HeartbeatRequest(site_id="site-b", task_id=secured.task.task_id), timeout=timeout
        ),
    }


@pytest.mark.parametrize("rpc", ["Register", "GetTask", "Submit", "Download", "Heartbeat"])
def test_a_site_cannot_act_as_another(secured: Secured, rpc: str) -> None:
    call = impersonations(secured)[rpc]
    assert callable(call)
    error = rpc_error(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'site-a'" in (error.details() or "") and "'site-b'" in (error.details() or "")


def test_the_impersonation_changed_nothing(secured: Secured) -> None:
    status = get_status(secured.address, tls=files_in(secured.certs, ADMIN_CN))
    assert status.current_results == 0  # the impersonated Submit did not count
    # the impersonated Register (num_examples 0) did not register site-b; the real one may have
    assert all(s.num_examples > 0 for s in status.sites)


def test_only_the_operator_calls_admin_service(secured: Secured) -> None:
    admin = secured.admin(ADMIN_CN)
    status = admin.GetStatus(pb.GetStatusRequest(), timeout=RPC_TIMEOUT)
    assert status.completed_round == 0
    model = b"".join(
        c.data for c in admin.DownloadModel(pb.DownloadModelRequest(), timeout=RPC_TIMEOUT)
    )
    assert model == secured.blob
    site = secured.admin("site-a")
    error = rpc_error(lambda: site.GetStatus(pb.GetStatusRequest(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'site-a'" in (error.details() or "")
    error = rpc_error(
        lambda: list(site.DownloadModel(pb.DownloadModelRequest(), timeout=RPC_TIMEOUT))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("site_id", ["admin", "site-a"])
def test_the_operator_cannot_act_as_a_site(secured: Secured, site_id: str) -> None:
    fed = secured.fed(ADMIN_CN)
    error = rpc_error(
        lambda: fed.Register(pb.RegisterRequest(site_id=site_id), timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator" in (error.details() or "")


def health(secured: Secured, creds: grpc.ChannelCredentials | None) -> grpc.Call:
    channel = (
        grpc.secure_channel(secured.address, creds)
        if creds is not None
        else grpc.insecure_channel(secured.address)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return rpc_error(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5))


def raw(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Credentials from the files as they are (TlsFiles would refuse an expired certificate
    before dialling)."""
    return grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


def test_a_certificate_from_another_ca_is_refused(secured: Secured) -> None:
    other = files_in(secured.other_ca, "site-a")
    error = health(secured, raw(secured.certs / "ca.crt", other.cert, other.key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_is_refused(secured: Secured) -> None:
    now = dt.datetime.now(dt.UTC)
    issue_site(
        secured.certs,
        "site-old",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    old = files_in(secured.certs, "site-old")
    error = health(secured, raw(old.ca, old.cert, old.key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ConfigError, match="expired"):  # and our client says so up front
        open_channel(secured.address, old)


def test_no_certificate_or_plaintext_is_refused(secured: Secured) -> None:
    assert health(secured, raw(secured.certs / "ca.crt")).code() == grpc.StatusCode.UNAVAILABLE
    assert health(secured, None).code() == grpc.StatusCode.UNAVAILABLE


def test_the_server_certificate_is_not_a_client_certificate(secured: Secured) -> None:
    server = files_in(secured.certs, SERVER)
    error = health(secured, raw(server.ca, server.cert, server.key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_sites_refuse_a_server_of_another_ca(secured: Secured) -> None:
    """The client checks the server too: trusting another CA, site-a cannot connect."""
    mine = files_in(secured.certs, "site-a")
    theirs = files_in(secured.other_ca, "site-a")
    error = health(secured, raw(theirs.ca, mine.cert, mine.key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_site_provisioned_later_joins_without_a_restart(secured: Secured) -> None:
    provision(secured.certs, ["site-a", "site-b", "site-c"])
    fed = secured.fed("site-c")
    reply = fed.Register(pb.RegisterRequest(site_id="site-c", num_examples=2), timeout=10)
    assert reply.federation_id


def test_operator_commands_with_certificates(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = str(secured.certs)
    assert check(secured.address, files_in(secured.certs, ADMIN_CN))
    assert main(["health", "--server", secured.address, "--tls-dir", certs]) == 0
    assert main(["status", "--server", secured.address, "--tls-dir", certs]) == 0
    assert "round 0/1 complete" in capsys.readouterr().out
    out = tmp_path / "model.safetensors"
    assert main(["download", "--server", secured.address, "--certs", certs, "--out", str(out)]) == 0
    assert out.read_bytes() == secured.blob
    capsys.readouterr()
    assert main(["status", "--server", secured.address, "--insecure"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert download_model(secured.address, out, tls=files_in(secured.certs, ADMIN_CN))


def test_an_insecure_server_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        start(ServerConfig(host="127.0.0.1", port=0, state_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="fedvox.server.app"):
        running = start(
            ServerConfig(host="127.0.0.1", port=0, state_dir=str(tmp_path), insecure=True)
        )
    try:
        assert "unauthenticated" in caplog.text
        assert check(f"127.0.0.1:{running.port}", None)  # anyone, no identities
    finally:
        running.stop(0)
