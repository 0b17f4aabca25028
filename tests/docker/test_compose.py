"""The Compose deployment against a real Docker engine: images, a 3-site run over the default
mutual TLS, scaled replicas with their own certificates, explicit plaintext, a site lost
mid-round, a server restarted mid-run. Each test is its own Compose project, brought down with
its volumes afterwards; the data folder is synthesised once by the data service."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import blake3
import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from fedvox.admin import download_model
from fedvox.tls import ADMIN_CN, files_in
from tests.docker.compose import SITES, Compose, finite_numbers

pytestmark = pytest.mark.docker

INSECURE_WARNING = "server: TLS is off (insecure)"


def rounds_of(status: dict[str, Any]) -> list[tuple[str, int]]:
    return [(h["kind"], int(h["round"])) for h in status["history"]]


def done(status: dict[str, Any]) -> bool:
    return bool(status["phase"] == "done")


def assert_checkpoint(compose: Compose, tmp_path: Path, round_: int, digest: str) -> None:
    """The server volume holds checkpoint `round_`, whole, with finite weights of `digest`."""
    compose.copy_from("server", "/state/checkpoints", tmp_path / "checkpoints")
    folder = tmp_path / "checkpoints" / f"round-{round_:06d}"
    meta = json.loads((folder / "round.json").read_text())
    blob = (folder / "global.safetensors").read_bytes()
    assert meta["round"] == round_
    assert blake3.blake3(blob).hexdigest() == meta["global_digest"] == digest
    weights = load_file(str(folder / "global.safetensors"))
    assert weights and all(np.isfinite(w).all() for w in weights.values())


def assert_sites_exited_cleanly(compose: Compose, services: list[str], restarts: bool) -> None:
    states = compose.wait_exited(services, timeout=180)
    for name, container in states.items():
        state = container["State"]
        assert state["ExitCode"] == 0 and not state["OOMKilled"], (name, state)
        if not restarts:
            assert container["RestartCount"] == 0, (name, compose.logs())


def test_images(project: Compose) -> None:
    """Both images: non-root, unbuffered; the server's has a health check and no torch."""
    tag = project.env.get("FEDVOX_TAG", "local")
    server_image, client_image = f"fedvox-server:{tag}", f"fedvox-client:{tag}"
    for image in (server_image, client_image):
        (config,) = json.loads(project.docker("image", "inspect", image))
        assert config["Config"]["User"] == "fedvox", image
        assert "PYTHONUNBUFFERED=1" in config["Config"]["Env"], image
    (server,) = json.loads(project.docker("image", "inspect", server_image))
    assert server["Config"]["Healthcheck"]["Test"][1:3] == ["fedvox", "health"]
    assert "/state" in server["Config"]["Volumes"]
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('monai'))"
    out = project.docker("run", "--rm", "--entrypoint", "python3", server_image, "-c", probe)
    assert out.split() == ["True", "None"], out  # no torch, no MONAI in the server image
    probe = "import os, torch, monai, nibabel, fedvox.client.runner; print(os.getuid())"
    out = project.docker("run", "--rm", "--entrypoint", "python3", client_image, "-c", probe)
    assert out.strip() == "10001"
    for image in (server_image, client_image):  # a new certs volume takes this owner
        out = project.docker("run", "--rm", "--entrypoint", "stat", image, "-c", "%u", "/certs")
        assert out.strip() == "10001", image


def test_transport_settings(project: Compose) -> None:
    """mTLS unless FEDVOX_INSECURE=true; certificates for every site folder and pool shard."""
    config = json.loads(project.run("config", "--format", "json").stdout)["services"]
    provision = config["certs"]["entrypoint"] + config["certs"]["command"]
    for flag in ("--sites-from=/data", "--sites-from=/data/pool", "--out=/certs"):
        assert flag in provision, provision
    assert config["server"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    for service in ["server", *SITES, "client"]:
        env = config[service]["environment"]
        assert not any("INSECURE" in k for k in env), (service, env)
        assert env["FEDVOX_TLS_DIR"] == "/certs", service  # the health check, `fedvox status`
        (certs,) = [v for v in config[service]["volumes"] if v["target"] == "/certs"]
        assert (certs["source"], certs["read_only"]) == ("certs", True), service
    assert config["server"]["environment"]["FEDVOX_SERVER_TLS_DIR"] == "/certs"
    assert config["client"]["environment"]["FEDVOX_CLIENT_TLS_DIR"] == "/certs"

    plain = Compose(project.project, {**project.env, "FEDVOX_INSECURE": "true"})
    config = json.loads(plain.run("config", "--format", "json").stdout)["services"]
    for service in ["server", *SITES, "client"]:
        env = config[service]["environment"]
        assert not any("TLS" in k for k in env), (service, env)
        assert env["FEDVOX_INSECURE"] == "true", service
    assert config["server"]["environment"]["FEDVOX_SERVER_INSECURE"] == "true"
    assert config["client"]["environment"]["FEDVOX_CLIENT_INSECURE"] == "true"

    other = Compose(project.project, {**project.env, "FEDVOX_INSECURE": "yes"})
    refused = other.run("config", check=False)
    assert refused.returncode != 0 and "insecure-yes.env" in refused.stderr, refused.stderr


def test_gpu_override(project: Compose) -> None:
    """docker-compose.gpu.yml reserves NVIDIA GPUs for every site service, the base file none."""
    base = json.loads(project.run("config", "--format", "json").stdout)
    gpu = Compose(project.project, project.env, ("docker-compose.yml", "docker-compose.gpu.yml"))
    merged = json.loads(gpu.run("config", "--format", "json").stdout)
    for service in [*SITES, "client"]:
        deploy = base["services"][service].get("deploy") or {}
        assert not (deploy.get("resources") or {}).get("reservations"), service
        devices = merged["services"][service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert merged["services"]["client"]["deploy"]["replicas"] == 0
    assert not (merged["services"]["server"].get("deploy") or {}).get("resources")


def test_remote_site_compose_file(project: Compose) -> None:
    """docker/site.compose.yml: one site on its own host, pointed at a remote server."""
    site = Compose(project.project, dict(project.env), ("docker/site.compose.yml",))
    site.env.update(FEDVOX_SERVER="fl.example.org:8787", FEDVOX_SITE_DATA="/srv/ct")
    site.env.pop("FEDVOX_SITE_ID", None)
    missing = site.run("config", check=False)  # the site id is required, and named
    assert missing.returncode != 0 and "FEDVOX_SITE_ID" in missing.stderr, missing.stderr
    site.env["FEDVOX_SITE_ID"] = "hospital-x"
    config = json.loads(site.run("config", "--format", "json").stdout)["services"]["site"]
    assert config["environment"]["FEDVOX_CLIENT_SERVER"] == "fl.example.org:8787"
    assert config["environment"]["FEDVOX_CLIENT_SITE_ID"] == "hospital-x"
    (data,) = [v for v in config["volumes"] if v["target"] == "/data"]
    assert (data["source"], data["read_only"]) == ("/srv/ct", True)
    assert config["image"] == f"fedvox-client:{project.env.get('FEDVOX_TAG', 'local')}"


def test_three_sites_two_rounds(project: Compose, tmp_path: Path) -> None:
    """`docker compose up`: data and certs services, server, site-a/b/c over mutual TLS;
    2 rounds; sites exit 0 on STOP; plaintext callers are refused; certs are never reissued."""
    project.run("up", "--detach")
    status = project.wait_status(done, "the federation to finish", timeout=420)
    assert_sites_exited_cleanly(project, SITES, restarts=False)
    assert project.container("data")["State"]["ExitCode"] == 0
    assert project.container("certs")["State"]["ExitCode"] == 0
    assert int(status["completed_round"]) == 2 and int(status["total_rounds"]) == 2
    assert rounds_of(status) == [
        ("init", 0),
        ("evaluate", 0),
        ("train", 1),
        ("train", 2),
        ("evaluate", 2),
    ]
    for entry in status["history"][1:]:
        assert entry["sites"] == SITES, entry
    final = status["history"][-1]["metrics"]
    assert {f"{s}/test_dice" for s in SITES} <= set(final)
    assert finite_numbers(status["history"]) and finite_numbers(status["sites"])
    assert_checkpoint(project, tmp_path, 2, status["global_digest"])
    # the server stays up and healthy (its health check speaks mTLS) for the model to be
    # fetched, here through the host port with the operator certificate
    server = project.container("server")
    assert server["State"]["Running"] and server["State"]["Health"]["Status"] == "healthy"
    assert INSECURE_WARNING not in project.logs("server")
    project.copy_from("server", "/certs", tmp_path / "certs")
    address = f"127.0.0.1:{project.port}"
    admin = files_in(tmp_path / "certs", ADMIN_CN)
    digest = download_model(address, tmp_path / "model.safetensors", tls=admin)
    assert digest == status["global_digest"]
    assert_mtls_only(project, address, tmp_path)
    assert_certs_kept(project)


def assert_mtls_only(project: Compose, address: str, tmp_path: Path) -> None:
    """Plaintext callers are refused, from the host and inside the network; keys are private."""
    with pytest.raises(grpc.RpcError) as refused:
        download_model(address, tmp_path / "plain.safetensors")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    plain = project.exec("server", "fedvox", "status", "--insecure", "--timeout", "5", check=False)
    assert plain.returncode != 0 and "UNAVAILABLE" in plain.stdout + plain.stderr, plain
    keys = ["ca.key", "server.key", "admin.key", *(f"sites/{s}.key" for s in SITES)]
    modes = project.exec("server", "stat", "-c", "%a %u", *(f"/certs/{k}" for k in keys))
    assert modes.stdout.split("\n")[:-1] == ["600 10001"] * len(keys), modes.stdout


def assert_certs_kept(project: Compose) -> None:
    """The certs service run again (as by a second `up`) keeps every certificate it made, and
    a site added later gets its own from the same CA, trusted by the running server at once."""
    files = ["ca.crt", "server.crt", "admin.crt", *(f"sites/{s}.crt" for s in SITES)]
    digests = ["sha256sum", *(f"/certs/{f}" for f in files)]
    before = project.exec("server", *digests).stdout
    again = project.run("run", "--rm", "--no-deps", "certs").stdout
    assert "issued" not in again and again.count("kept") >= len(files), again
    added = project.run("run", "--rm", "--no-deps", "certs", "--out=/certs", "--sites=site-d")
    issued = [line for line in added.stdout.splitlines() if line.startswith("issued")]
    assert issued == ["issued /certs/sites/site-d.crt (site site-d)"], added.stdout
    assert project.exec("server", *digests).stdout == before
    site_d = ["--tls-ca=/certs/ca.crt", "--tls-cert=/certs/sites/site-d.crt"]
    health = project.exec(
        "server", "fedvox", "health", *site_d, "--tls-key=/certs/sites/site-d.key"
    )
    assert health.stdout.strip() == "SERVING"


def test_scaled_clients_are_distinct_sites(project: Compose) -> None:
    """`--scale client=2`: two more sites, each with its own id, its own pool shard and the
    certificate of that id (the server takes a site's id from its certificate and refuses a
    request in the name of another, so each registration below is that certificate's)."""
    project.env["FEDVOX_SERVER_MIN_SITES"] = "5"  # every site in every round
    project.env["FEDVOX_SERVER_ROUNDS"] = "1"
    project.run("up", "--detach", "--scale", "client=2")
    status = project.wait_status(done, "the federation to finish", timeout=420)
    assert_sites_exited_cleanly(project, [*SITES, "client"], restarts=False)
    ids = sorted(s["site_id"] for s in status["sites"])
    assert ids == ["shard-00", "shard-01", *SITES], ids
    assert status["history"][-1]["sites"] == ids  # all five took part in the run
    replicas = project.containers("client")
    assert len(replicas) == 2
    hosts = {r["Config"]["Hostname"] for r in replicas}
    shards = {s["site_id"]: s["info"] for s in status["sites"] if s["site_id"].startswith("shard")}
    # each replica registered from its own container with its own shard as data root
    assert {info["host"] for info in shards.values()} == hosts
    assert {site: info["data_root"] for site, info in shards.items()} == {
        "shard-00": "/pool/shard-00",
        "shard-01": "/pool/shard-01",
    }
    logs = project.logs("client")
    for shard in shards:
        assert re.search(rf"claim: \w+ holds shard {shard} of /pool", logs), logs[-3000:]
    provisioned = project.logs("certs")
    for shard in ("shard-00", "shard-01", "shard-02"):  # the whole pool, claimed or not
        assert f"issued /certs/sites/{shard}.crt" in provisioned, provisioned[-3000:]


def test_explicit_insecure_mode(project: Compose) -> None:
    """FEDVOX_INSECURE=true: a plaintext server that warns, with a plaintext health check."""
    project.env["FEDVOX_INSECURE"] = "true"
    project.run("up", "--detach", "server")
    project.wait_healthy("server", timeout=120)
    assert INSECURE_WARNING in project.logs("server")
    status = project.status()
    assert status is not None and status["phase"], status


def test_round_closes_without_a_stopped_site(project: Compose) -> None:
    """A site stopped mid-round: the round closes with the others' results and the run ends."""
    project.env.update(
        {
            "FEDVOX_SERVER_MIN_SITES": "2",
            "FEDVOX_SERVER_ROUNDS": "3",
            "FEDVOX_SERVER_TRAIN_LOCAL_STEPS": "200",
            "FEDVOX_SERVER_SITE_TIMEOUT_S": "8",
            "FEDVOX_SERVER_ROUND_TIMEOUT_S": "240",
        }
    )
    project.run("up", "--detach")

    # the first training round in which all three sites train: with two sites enough to start
    # one, a site that registers a moment late misses round 1 and joins round 2
    def training_with_all(status: dict[str, Any]) -> bool:
        busy = [s for s in status["sites"] if s["current_task_id"] and s["progress"] < 0.5]
        return (
            int(status["current_round"]) >= 1
            and int(status["current_expected"]) == 3
            and ("evaluate", 0) in rounds_of(status)
            and bool(busy)
        )

    status = project.wait_status(training_with_all, "all three sites training", timeout=300)
    round_ = int(status["current_round"])
    busy = [s for s in status["sites"] if s["current_task_id"] and s["progress"] < 0.5]
    victim = min(busy, key=lambda s: float(s["progress"]))["site_id"]
    project.may_fail.add(victim)
    project.run("stop", "--timeout", "5", victim)
    status = project.wait_status(done, "the federation to finish", timeout=420)
    survivors = [s for s in SITES if s != victim]
    (closed,) = [h for h in status["history"] if (h["kind"], int(h["round"])) == ("train", round_)]
    assert closed["sites"] == survivors, closed  # closed without the stopped site
    assert float(closed["duration_seconds"]) < 240  # by liveness and quorum, not the deadline
    assert int(status["completed_round"]) == 3
    assert finite_numbers(status["history"])
    assert_sites_exited_cleanly(project, survivors, restarts=False)
    assert project.container(victim)["State"]["Status"] == "exited"


def test_server_restart_resumes_from_its_checkpoint(project: Compose, tmp_path: Path) -> None:
    """The server container restarted mid-run resumes from its last checkpoint and finishes."""
    project.env.update({"FEDVOX_SERVER_ROUNDS": "3", "FEDVOX_SERVER_TRAIN_LOCAL_STEPS": "60"})
    project.run("up", "--detach")
    before = project.wait_status(
        lambda s: int(s["completed_round"]) >= 1 and not done(s), "round 1", timeout=300
    )
    server = project.container("server")
    project.docker("restart", "-t", "30", server["Id"])
    status = project.wait_status(done, "the federation to finish", timeout=420)
    logs = project.logs("server")
    assert "signal 15, shutting down" in logs  # a graceful stop on SIGTERM
    resumed = re.findall(r"resume: continuing after round (\d+)", logs)
    assert resumed and int(resumed[-1]) >= int(before["completed_round"]), logs[-3000:]
    assert status["federation_id"] == before["federation_id"]
    assert int(status["completed_round"]) == 3
    trained = [r for kind, r in rounds_of(status) if kind == "train"]
    assert trained == [1, 2, 3]
    assert finite_numbers(status["history"])
    assert_checkpoint(project, tmp_path, 3, status["global_digest"])
    # the sites rode through the restart: no crash, no restart by their restart policy
    assert_sites_exited_cleanly(project, SITES, restarts=False)
