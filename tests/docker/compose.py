"""Drive `docker compose` for the tests: one project per test, status through the server."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SITES = ["site-a", "site-b", "site-c"]

# tiny and quick on 2 CPU cores: 32^3 volumes, the CPU model of `fedvox simulate`, few steps
TEST_SETTINGS = {
    "FEDVOX_SYNTH_SIZE": "32",
    "FEDVOX_POOL_SIZE": "3",
    "FEDVOX_CLIENT_THREADS": "1",
    "FEDVOX_CLIENT_MAX_BACKOFF_S": "2",
    "FEDVOX_SERVER_ROUNDS": "2",
    "FEDVOX_SERVER_MIN_SITES": "3",
    "FEDVOX_SERVER_TRAIN_LOCAL_STEPS": "10",
    "FEDVOX_SERVER_HEARTBEAT_INTERVAL_S": "1",
    "FEDVOX_SERVER_POLL_TIMEOUT_S": "3",
    "FEDVOX_SERVER_SITE_TIMEOUT_S": "30",
    "FEDVOX_SERVER_ROUND_TIMEOUT_S": "300",
}


def engine_problem() -> str | None:
    """Why no Docker engine and Compose v2 can be used here, or None when they can."""
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        return "no docker CLI on PATH (bash docker/ci.sh installs and starts an engine)"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return (
            f"no Docker engine reachable (`docker info` failed: {detail}); "
            "bash docker/ci.sh starts one and runs these tests"
        )
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0:
        return "the Docker Compose v2 plugin is missing (`docker compose version` failed)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def finite_numbers(value: Any) -> bool:
    """True when every number in a JSON document is finite (JSON spells NaN as "NaN")."""
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    if isinstance(value, str):
        return value not in ("NaN", "Infinity", "-Infinity")
    if isinstance(value, float):
        return math.isfinite(value)
    return True


@dataclass
class Compose:
    """One Compose project of the repository's docker-compose.yml."""

    project: str
    env: dict[str, str]
    files: Sequence[str] = ("docker-compose.yml",)
    log: list[str] = field(default_factory=list)
    may_fail: set[str] = field(default_factory=set)  # services whose exit code is not checked

    @property
    def port(self) -> int:
        return int(self.env["FEDVOX_PORT"])

    def command(self, *args: str) -> list[str]:
        files = [a for f in self.files for a in ("-f", f)]
        return ["docker", "compose", *files, "-p", self.project, *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(
            self.command(*args),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log.append(
            f"$ docker compose {' '.join(args)}  -> {done.returncode} "
            f"({time.monotonic() - started:.1f}s)"
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def docker(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def exec(
        self, service: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the service's running container, as its user, in its environment."""
        return self.run("exec", "-T", service, *args, check=check)

    def status(self) -> dict[str, Any] | None:
        """The server's `fedvox status --json`, or None while it does not answer."""
        done = self.exec("server", "fedvox", "status", "--json", "--timeout", "5", check=False)
        if done.returncode != 0:
            return None
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None:
                last = status
                if predicate(status):
                    return status
            self.check_no_crash()
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")

    def wait_healthy(self, service: str, timeout: float) -> None:
        """Wait until the service's container reports its health check healthy."""
        deadline = time.monotonic() + timeout
        while self.container(service)["State"].get("Health", {}).get("Status") != "healthy":
            self.check_no_crash()
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} not healthy after {timeout:.0f}s")
            time.sleep(1)

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """`docker inspect` of the project's containers (of one service), stopped ones too."""
        label = f"label=com.docker.compose.project={self.project}"
        args = ["ps", "-a", "-q", "--filter", label]
        if service is not None:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = self.docker(*args).split()
        if not ids:
            return []
        inspected: list[dict[str, Any]] = json.loads(self.docker("inspect", *ids))
        return sorted(inspected, key=lambda c: str(c["Name"]))

    def container(self, service: str) -> dict[str, Any]:
        (found,) = self.containers(service)
        return found

    def check_no_crash(self) -> None:
        """Fail at once if a container (but those of `may_fail`) exited with a non-zero code
        or was restarted by its restart policy (which would hide a crash loop)."""
        for c in self.containers():
            service = c["Config"]["Labels"]["com.docker.compose.service"]
            state = c["State"]
            if service in self.may_fail:
                continue
            crashed = state["Status"] == "exited" and state["ExitCode"] != 0
            if crashed or c["RestartCount"] > 0:
                raise AssertionError(
                    f"{c['Name']} exited with {state['ExitCode']} "
                    f"(restarts: {c['RestartCount']}):\n{self.logs(service)[-3000:]}"
                )

    def wait_exited(self, services: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every container of `services` has exited for good; their states."""
        deadline = time.monotonic() + timeout
        while True:
            states = {c["Name"].lstrip("/"): c for s in services for c in self.containers(s)}
            done = [c for c in states.values() if c["State"]["Status"] == "exited"]
            if states and len(done) == len(states):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"still running after {timeout:.0f}s: "
                    + ", ".join(n for n, c in states.items() if c not in done)
                )
            time.sleep(1)

    def logs(self, service: str | None = None) -> str:
        args = ["logs", "--no-color", "--timestamps"] + ([service] if service else [])
        done = self.run(*args, check=False, timeout=60)
        return done.stdout + done.stderr

    def copy_from(self, service: str, source: str, target: Path) -> None:
        self.run("cp", f"{service}:{source}", str(target))

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


def project_env(data: Path, **settings: str) -> dict[str, str]:
    """The environment of a test's Compose project: the shell's, the test settings, `settings`."""
    env = dict(os.environ)
    env.update(TEST_SETTINGS)
    env.update(
        {
            "FEDVOX_DATA": str(data),
            "FEDVOX_PORT": str(free_port()),
            "DOCKER_BUILDKIT": "0",  # BuildKit's front-end images cannot be pulled here
            "COMPOSE_BAKE": "false",
        }
    )
    env.update(settings)
    return env
