"""What persists at a site between rounds and restarts: personal layers (FedBN, FedPer)
and SCAFFOLD's control variate c_i. Stored as safetensors, never pickled."""

from __future__ import annotations

from pathlib import Path

from fedvox.wire.tensors import StateDict, parse_safetensors, write_safetensors


class SiteState:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.safetensors"

    def load(self, name: str) -> StateDict | None:
        path = self._path(name)
        if not path.is_file():
            return None
        return parse_safetensors(bytearray(path.read_bytes()))

    def save(self, name: str, tensors: StateDict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_safetensors(tensors, self._path(name))  # atomic: tmp + fsync + rename
