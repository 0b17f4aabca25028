"""Accepted updates spilled to disk, one safetensors blob per site and round.

Every accepted upload is written here before it counts. Streaming schemes then
fold the updates in sorted site order (so the result does not depend on arrival
order), and batch schemes read all of them back one tensor at a time through
memory maps, so N sites never mean N models in RAM.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedvox.server.strategies import Update
from fedvox.wire.tensors import Array, StateDict, parse_safetensors


@dataclass(frozen=True)
class SpilledUpdate:
    site_id: str
    num_examples: int
    local_steps: int
    metrics: dict[str, float]
    digest: str
    path: Path

    def tensors(self) -> StateDict:
        """Read-only views into a memory map of the blob: pages load as they are read."""
        return parse_safetensors(np.memmap(self.path, dtype=np.uint8, mode="r"))

    def load(self) -> Update:
        return Update(
            self.site_id, self.num_examples, self.tensors(), self.local_steps, dict(self.metrics)
        )


class RoundJournal:
    """The spill folder of one round attempt: <state>/journal/round-NNNNNN/."""

    def __init__(self, root: Path, round_: int) -> None:
        self.path = root / f"round-{round_:06d}"
        shutil.rmtree(self.path, ignore_errors=True)  # an abandoned attempt's leftovers
        self.path.mkdir(parents=True)
        self.entries: dict[str, SpilledUpdate] = {}

    def spill(
        self,
        site_id: str,
        blob: bytes | bytearray | memoryview,
        digest: str,
        num_examples: int,
        local_steps: int,
        metrics: dict[str, float],
    ) -> SpilledUpdate:
        blob_path = self.path / f"{site_id}.safetensors"
        _write_atomic(blob_path, blob)
        entry = SpilledUpdate(site_id, num_examples, local_steps, dict(metrics), digest, blob_path)
        meta = {
            "site_id": site_id,
            "num_examples": num_examples,
            "local_steps": local_steps,
            "metrics": metrics,
            "digest": digest,
        }
        _write_atomic(self.path / f"{site_id}.json", json.dumps(meta).encode())
        self.entries[site_id] = entry
        return entry

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class SpilledUpdateSet:
    """The UpdateSet batch schemes read: every spilled update, one tensor at a time."""

    def __init__(self, entries: Sequence[SpilledUpdate]) -> None:
        self._entries = {e.site_id: e for e in sorted(entries, key=lambda e: e.site_id)}
        self._views: dict[str, StateDict] = {}

    @property
    def sites(self) -> Sequence[str]:
        return list(self._entries)

    def num_examples(self, site: str) -> int:
        return self._entries[site].num_examples

    def local_steps(self, site: str) -> int:
        return self._entries[site].local_steps

    def tensor(self, site: str, name: str) -> Array:
        if site not in self._views:  # maps cost address space, not memory
            self._views[site] = self._entries[site].tensors()
        return self._views[site][name]


def _write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
