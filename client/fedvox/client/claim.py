"""Replica identity: each replica of a scaled site service claims its own data shard.

`docker compose up --scale client=N` starts N identical containers with identical settings,
yet each must be a distinct site: its own site id and its own data. The data service writes a
pool of shards (`pool/shard-00`, `pool/shard-01`, ...: each an ordinary site folder with a
dataset.json). Every replica mounts the pool read-only and one shared writable claims folder
(a named volume), and when it has no site id of its own it claims one shard at start:

- A claim is an exclusive `flock` on `<claims>/<shard>.lock`, held for the life of the process.
  The kernel drops it when the process ends, however it ends (STOP, crash, SIGKILL, container
  removed), so no shard stays held by a dead replica: scaling down and up again, or
  `docker compose down` and `up`, reuses the same shards instead of leaking them.
- `<claims>/<shard>.owner` records the holder's hostname. A container's hostname is its id,
  which a restart of that container keeps, so a restarted replica first takes back a free shard
  it held before and trains on as the same site. Otherwise a replica takes the free shard with
  the lowest number.
- Replicas claim one at a time under an exclusive lock on `<claims>/.lock`, so two replicas that
  start together never take the same shard.
- The shard's folder name is the site id, so the server sees N distinct sites, each on its own
  data. A replica that finds every shard held exits with an error that says so.

`flock` needs the replicas to share one host's filesystem (a local named volume); it is not to
be trusted across hosts over NFS. Sites on different hosts are named, not claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
_held: dict[str, int] = {}  # shard name -> descriptor whose flock is the claim


@dataclass(frozen=True)
class Claim:
    site_id: str
    data_root: Path
    owner: str
    reclaimed: bool  # this owner held the shard before (a restarted container)


def shards(pool: Path) -> list[Path]:
    """The pool's shard folders (those with a dataset.json), in name order."""
    if not pool.is_dir():
        raise ValueError(f"claim pool {str(pool)!r} is not a directory")
    return sorted(
        p
        for p in pool.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / DATASET_JSON).is_file()
    )


def claim_shard(pool: Path, claims: Path, owner: str | None = None) -> Claim:
    """Claim a free shard of `pool` for this process (see the module docstring)."""
    owner = owner or socket.gethostname()
    candidates = shards(pool)
    if not candidates:
        raise ValueError(f"claim pool {str(pool)!r} holds no shard with a {DATASET_JSON}")
    try:
        claims.mkdir(parents=True, exist_ok=True)
        with _exclusive(claims / ".lock"):
            held_before = [s for s in candidates if _owner(claims, s.name) == owner]
            for shard in held_before + [s for s in candidates if s not in held_before]:
                if shard.name in _held:  # this process holds it already
                    continue
                fd = _try_lock(claims / f"{shard.name}.lock")
                if fd is None:
                    continue
                reclaimed = shard in held_before
                _write_owner(claims, shard.name, owner)
                _held[shard.name] = fd
                log.info(
                    "claim: %s holds shard %s of %s%s",
                    owner,
                    shard.name,
                    pool,
                    " again (it held it before a restart)" if reclaimed else "",
                )
                return Claim(shard.name, shard, owner, reclaimed)
    except OSError as exc:
        raise ValueError(f"cannot record a claim in {str(claims)!r}: {exc}") from None
    raise ValueError(
        f"all {len(candidates)} shards of {str(pool)!r} are claimed by running replicas; "
        "make a larger pool (FEDVOX_POOL_SIZE) or run fewer replicas"
    )


def release(site_id: str) -> None:
    """Give a claim up before the process ends (tests; the kernel does it at exit)."""
    fd = _held.pop(site_id, None)
    if fd is not None:
        os.close(fd)


def owners(claims: Path) -> dict[str, str]:
    """Shard name -> hostname of its latest holder, as recorded in the claims folder."""
    return {p.name.removesuffix(".owner"): p.read_text().strip() for p in claims.glob("*.owner")}


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _owner(claims: Path, name: str) -> str:
    try:
        return (claims / f"{name}.owner").read_text().strip()
    except FileNotFoundError:
        return ""


def _write_owner(claims: Path, name: str, owner: str) -> None:
    tmp = claims / f".{name}.owner.{os.getpid()}"
    tmp.write_text(owner + "\n")
    os.replace(tmp, claims / f"{name}.owner")
