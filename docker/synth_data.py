"""The Compose data service: fill the data folder with synthetic head CT where it is empty.

    python docker/synth_data.py /data       # in the client image: fedvox-synth-data /data

Writes `site-a`, `site-b`, ... (FEDVOX_SYNTH_SITES, default 3) for the named site services and
`pool/shard-00`, `pool/shard-01`, ... (FEDVOX_POOL_SIZE, default 8) for the scalable `client`
service, whose replicas each claim one shard (fedvox.client.claim). Volumes are
FEDVOX_SYNTH_SIZE voxels a side (default 64); FEDVOX_SYNTH_SEED (default 0) seeds the named
sites and seed + 1 the pool, so no shard repeats a named site's subjects. A site or shard that
already has a dataset.json is left alone, so the service is quick once the data exists and never
touches real data put there. New files are given the owner of the data folder itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from fedvox.synth import DATASET_JSON, default_profiles, generate_federation


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def fill(root: Path, sites: int, pool: int, size: int, seed: int) -> list[Path]:
    """Generate what is missing under `root`; returns the folders written."""
    written: list[Path] = []
    root.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in default_profiles(sites)] if sites else []
    missing = [n for n in names if not (root / n / DATASET_JSON).is_file()]
    if missing:
        generate_federation(root, sites, seed=seed, size=size, progress=print)
        written += [root / n for n in missing]
    shard_dir = root / "pool"
    shard_names = [f"shard-{i:02d}" for i in range(pool)]
    if any(not (shard_dir / s / DATASET_JSON).is_file() for s in shard_names):
        staging = shard_dir / ".staging"
        generate_federation(staging, pool, seed=seed + 1, size=size, progress=print)
        for profile, shard in zip(default_profiles(pool), shard_names, strict=True):
            target = shard_dir / shard
            if (target / DATASET_JSON).is_file():
                continue
            if target.exists():  # an interrupted earlier attempt
                shutil.rmtree(target)
            os.replace(staging / profile.name, target)
            written.append(target)
        shutil.rmtree(staging)
    return written


def chown_like(root: Path, paths: list[Path]) -> None:
    """Give what this (root) process wrote the owner of the data folder, when it has one."""
    info = root.stat()
    if os.geteuid() != 0 or info.st_uid == 0:
        return
    for top in {root / "pool", *paths}:
        for folder, dirs, files in os.walk(top):
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                os.chown(name, info.st_uid, info.st_gid)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "/data")
    sites = _env_int("FEDVOX_SYNTH_SITES", 3)
    pool = _env_int("FEDVOX_POOL_SIZE", 8)
    size = _env_int("FEDVOX_SYNTH_SIZE", 64)
    seed = _env_int("FEDVOX_SYNTH_SEED", 0)
    written = fill(root, sites, pool, size, seed)
    chown_like(root, written)
    if written:
        print(f"data: wrote {', '.join(str(p.relative_to(root)) for p in written)} in {root}")
    else:
        print(f"data: {root} already holds {sites} site(s) and {pool} pool shard(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
