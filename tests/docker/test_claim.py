"""Replica identity (fedvox.client.claim) without Docker: how replicas of the scalable Compose
service share out the shards of a pool. Not marked `docker`: these run in every pytest run."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedvox.client import claim
from fedvox.client.config import load_client_config


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    for name in ("shard-00", "shard-01", "shard-02"):
        (root / name).mkdir(parents=True)
        (root / name / "dataset.json").write_text(json.dumps({"training": []}))
    (root / "not-a-shard").mkdir()  # no dataset.json
    return root


@pytest.fixture(autouse=True)
def release_all() -> Iterator[None]:
    yield
    for name in list(claim._held):
        claim.release(name)


def hold(path: Path) -> int:
    """Lock a claim file as another process would (a separate open file description)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_replicas_get_distinct_shards_in_order(pool: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    first = claim.claim_shard(pool, claims, owner="host-1")
    second = claim.claim_shard(pool, claims, owner="host-2")
    assert (first.site_id, second.site_id) == ("shard-00", "shard-01")
    assert first.data_root == pool / "shard-00" and not first.reclaimed
    assert claim.owners(claims) == {"shard-00": "host-1", "shard-01": "host-2"}


def test_a_live_holder_keeps_its_shard_and_a_dead_one_frees_it(pool: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    other = hold(claims / "shard-00.lock")
    assert claim.claim_shard(pool, claims, owner="host-2").site_id == "shard-01"
    os.close(other)  # that replica ended: the kernel dropped its lock
    assert claim.claim_shard(pool, claims, owner="host-3").site_id == "shard-00"


def test_a_restarted_container_takes_back_its_own_shard(pool: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claim.claim_shard(pool, claims, owner="host-1")
    claim.claim_shard(pool, claims, owner="host-2")
    claim.release("shard-00")  # both replicas stopped
    claim.release("shard-01")
    again = claim.claim_shard(pool, claims, owner="host-2")
    assert (again.site_id, again.reclaimed) == ("shard-01", True)


def test_the_lock_outlives_no_process(pool: Path, tmp_path: Path) -> None:
    """A claim made by a process that has exited (crash, SIGKILL) is free again."""
    claims = tmp_path / "claims"
    code = (
        "import sys; from pathlib import Path; from fedvox.client.claim import claim_shard; "
        "print(claim_shard(Path(sys.argv[1]), Path(sys.argv[2]), 'gone').site_id)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(pool), str(claims)], capture_output=True, text=True
    )
    assert done.stdout.strip() == "shard-00", done.stderr
    assert claim.claim_shard(pool, claims, owner="next").site_id == "shard-00"


def test_a_full_pool_and_an_empty_one_are_errors(pool: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    for owner in ("a", "b", "c"):
        claim.claim_shard(pool, claims, owner=owner)
    with pytest.raises(ValueError, match=r"all 3 shards .* are claimed"):
        claim.claim_shard(pool, claims, owner="d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no shard"):
        claim.claim_shard(tmp_path / "empty", claims)


def test_client_config_claims_when_it_has_no_site_id(pool: Path, tmp_path: Path) -> None:
    environ = {
        "FEDVOX_CLIENT_CLAIM_POOL": str(pool),
        "FEDVOX_CLIENT_CLAIM_DIR": str(tmp_path / "claims"),
    }
    config = load_client_config(environ=environ)
    assert (config.site_id, config.data_root) == ("shard-00", str(pool / "shard-00"))
    named = load_client_config(
        environ={
            **environ,
            "FEDVOX_CLIENT_SITE_ID": "site-a",
            "FEDVOX_CLIENT_DATA_ROOT": str(pool / "shard-02"),
        }
    )
    assert named.site_id == "site-a"  # a named site claims nothing
    assert claim.owners(tmp_path / "claims").keys() == {"shard-00"}
