"""Content-addressed global models and atomic per-round checkpoints.

Layout under the state directory:

    checkpoints/round-000003/global.safetensors   the global weights after round 3
    checkpoints/round-000003/strategy.safetensors the scheme's server state (may be empty)
    checkpoints/round-000003/round.json           metadata, history, digests

A checkpoint is written into a temporary directory, fsynced, then renamed
into place, so a crash leaves either the whole round or none of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvox.wire.digest import ALGORITHM, LEGACY_ALGORITHM, file_digest
from fedvox.wire.files import fsync_dir, write_atomic
from fedvox.wire.tensors import StateDict, parse_safetensors, write_safetensors

log = logging.getLogger(__name__)
_ROUND_DIR = re.compile(r"^round-(\d{6})$")


@dataclass(frozen=True)
class Checkpoint:
    round: int
    path: Path
    meta: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / "global.safetensors"

    @property
    def digest(self) -> str:
        return str(self.meta["global_digest"])

    @property
    def publish(self) -> tuple[str, int]:
        """(digest, size) of what train tasks download: the model, plus scheme extras."""
        if "publish_digest" in self.meta:
            return str(self.meta["publish_digest"]), int(self.meta["publish_size"])
        return self.digest, int(self.meta["global_size"])

    @property
    def publish_path(self) -> Path:
        path = self.path / "publish.safetensors"
        return path if "publish_digest" in self.meta else self.model_path


class Store:
    """Owns the state directory; every global model it serves is a checkpoint file."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.checkpoints = state_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._blobs: dict[str, Path] = {}

    def write_checkpoint(
        self,
        round_: int,
        weights: StateDict,
        strategy_state: StateDict,
        extras: StateDict,
        meta: dict[str, Any],
    ) -> Checkpoint:
        final = self.checkpoints / f"round-{round_:06d}"
        tmp = self.checkpoints / f".tmp-round-{round_:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        digest = write_safetensors(weights, tmp / "global.safetensors")
        strategy_digest = write_safetensors(strategy_state, tmp / "strategy.safetensors")
        meta = {
            **meta,
            "round": round_,
            "global_digest": digest,
            "global_size": (tmp / "global.safetensors").stat().st_size,
            "strategy_digest": strategy_digest,
            "digest_algorithm": ALGORITHM,
        }
        if extras:  # e.g. SCAFFOLD's c, which sites download with the model
            meta["publish_digest"] = write_safetensors(
                {**weights, **extras}, tmp / "publish.safetensors"
            )
            meta["publish_size"] = (tmp / "publish.safetensors").stat().st_size
        _write_json(tmp / "round.json", meta)
        fsync_dir(tmp)
        if final.exists():  # a rerun of a round whose checkpoint a crash left behind
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.checkpoints)
        checkpoint = Checkpoint(round_, final, meta)
        self._register(checkpoint)
        log.info("checkpoint: round %d written to %s (digest %s)", round_, final, digest[:12])
        return checkpoint

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint whose files match their recorded digests."""
        rounds = sorted(
            (int(m.group(1)), p)
            for p in self.checkpoints.iterdir()
            if (m := _ROUND_DIR.match(p.name))
        )
        for round_, path in reversed(rounds):
            try:
                meta = json.loads((path / "round.json").read_text())
                algorithm = meta.get("digest_algorithm", LEGACY_ALGORITHM)
                model = path / "global.safetensors"
                if file_digest(model, algorithm) != meta["global_digest"]:
                    raise ValueError("global.safetensors does not match its digest")
                if algorithm != ALGORITHM:
                    meta = _upgrade_digests(path, meta)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("checkpoint: skipping damaged %s: %s", path, exc)
                continue
            checkpoint = Checkpoint(round_, path, meta)
            self._register(checkpoint)
            return checkpoint
        return None

    def _register(self, checkpoint: Checkpoint) -> None:
        self._blobs[checkpoint.digest] = checkpoint.model_path
        self._blobs[checkpoint.publish[0]] = checkpoint.publish_path

    def load_weights(self, checkpoint: Checkpoint) -> StateDict:
        return parse_safetensors(_read_writable(checkpoint.model_path))

    def load_strategy_state(self, checkpoint: Checkpoint) -> StateDict:
        return parse_safetensors(_read_writable(checkpoint.path / "strategy.safetensors"))

    def blob_path(self, digest: str) -> Path | None:
        return self._blobs.get(digest)


def _read_writable(path: Path) -> bytearray:
    """The file's bytes in one writable buffer, read straight into it: `bytearray(read_bytes())`
    would hold the file twice for a moment, a model-sized spike at every round's end."""
    with open(path, "rb") as f:
        buffer = bytearray(os.fstat(f.fileno()).st_size)
        if f.readinto(buffer) != len(buffer):
            raise OSError(f"{path} changed size while being read")
    return buffer


def _upgrade_digests(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Re-digest a checkpoint written before fedvox switched from SHA-256 to BLAKE3 (the
    model was just verified with its old digest), so that sites, which check BLAKE3, can
    download it. round.json is replaced atomically: a crash leaves the old or the new one."""
    meta = {**meta, "digest_algorithm": ALGORITHM}
    for key, name in (
        ("global_digest", "global.safetensors"),
        ("strategy_digest", "strategy.safetensors"),
        ("publish_digest", "publish.safetensors"),
    ):
        if key in meta:
            meta[key] = file_digest(path / name)
    write_atomic(path / "round.json", _json_bytes(meta))
    log.info("checkpoint: %s re-digested with %s (it was written with sha256)", path, ALGORITHM)
    return meta


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        f.write(_json_bytes(data))
        f.flush()
        os.fsync(f.fileno())
