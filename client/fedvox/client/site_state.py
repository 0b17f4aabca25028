"""What persists at a site between rounds and restarts: personal layers (FedBN, FedPer)
and SCAFFOLD's control variate c_i. Stored as safetensors, never pickled.

Each version is kept under the round that produced it (`personal-000003.safetensors`),
and a round reads the newest version from before it. So a round that is run again
(after a server or client restart) starts from exactly the state the first attempt saw.
"""

from __future__ import annotations

import re
from pathlib import Path

from fedvox.wire.tensors import StateDict, parse_safetensors, write_safetensors

KEEP_VERSIONS = 3


class SiteState:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _versions(self, name: str) -> list[tuple[int, Path]]:
        pattern = re.compile(rf"^{re.escape(name)}-(\d+)\.safetensors$")
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := pattern.match(p.name))]
        return sorted(found)

    def load(self, name: str, upto_round: int) -> StateDict | None:
        """The newest version saved by a round <= upto_round, or None."""
        versions = [p for r, p in self._versions(name) if r <= upto_round]
        if not versions:
            return None
        return parse_safetensors(bytearray(versions[-1].read_bytes()))

    def save(self, name: str, round_: int, tensors: StateDict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_safetensors(tensors, self.root / f"{name}-{round_:06d}.safetensors")  # atomic
        for _, old in self._versions(name)[:-KEEP_VERSIONS]:
            old.unlink(missing_ok=True)
