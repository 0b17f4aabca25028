"""Docker tests: skipped with the reason when no engine is reachable, unless
FEDVOX_DOCKER_REQUIRED=1 (docker/ci.sh sets it), which turns the reason into a failure."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.compose import Compose, engine_problem, project_env

_problem: list[str | None] = []


def _engine_problem() -> str | None:
    if not _problem:
        _problem.append(engine_problem())
    return _problem[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    docker_items = [i for i in items if i.get_closest_marker("docker") is not None]
    if not docker_items:
        return
    reason = _engine_problem()
    if reason is None:
        return
    if os.environ.get("FEDVOX_DOCKER_REQUIRED") == "1":
        raise pytest.UsageError(f"FEDVOX_DOCKER_REQUIRED=1 but {reason}")
    for item in docker_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic data folder for every project of the session (the data service fills it)."""
    return tmp_path_factory.mktemp("fedvox-data")


@pytest.fixture(scope="session")
def built(data_dir: Path) -> dict[str, float]:
    """Build both images once (docker compose build); returns the seconds it took."""
    compose = Compose("fedvox-build", project_env(data_dir))
    started = time.monotonic()
    compose.run("build", timeout=1800)
    return {"build_seconds": time.monotonic() - started}


@pytest.fixture
def project(
    request: pytest.FixtureRequest, data_dir: Path, built: dict[str, float]
) -> Iterator[Compose]:
    """A fresh Compose project (its own network and volumes), brought down with its volumes."""
    compose = Compose(f"fvtest-{uuid.uuid4().hex[:8]}", project_env(data_dir))
    yield compose
    failed = any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    if failed:
        print("\n".join(compose.log))
        print(compose.logs()[-20000:])
    compose.down()
    leftover = compose.docker(
        "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={compose.project}"
    )
    assert not leftover.split(), f"volumes left behind: {leftover}"
