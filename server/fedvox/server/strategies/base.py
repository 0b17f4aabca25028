"""The one extension point for aggregation schemes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from fedvox.wire.tensors import StateDict


@dataclass(frozen=True)
class Update:
    """One site's accepted result for a training round."""

    site_id: str
    num_examples: int
    tensors: StateDict  # deltas: local weights minus the round's global weights
    local_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Strategy(ABC):
    """A pure aggregation scheme: no I/O, no gRPC, no clocks.

    The server calls `begin` with the round's global weights, `accept` once per
    update as it arrives (a streaming fold, so memory does not grow with the
    number of sites), then `finish` for the new global weights.
    """

    name: str = ""

    def client_config(self, round_: int) -> dict[str, Any]:
        """Extra settings the client half of the scheme needs (e.g. FedProx's mu)."""
        return {}

    @abstractmethod
    def begin(self, global_weights: StateDict) -> None:
        """Start a round from `global_weights` (read-only views; do not keep them past finish)."""

    @abstractmethod
    def accept(self, update: Update) -> None:
        """Fold in one update; it has already passed schema and finiteness checks."""

    @abstractmethod
    def finish(self) -> StateDict:
        """Return the new global weights; at least one update was accepted."""

    def state_dict(self) -> StateDict:
        """Server-side state to checkpoint with the round (optimizer moments, ...)."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what `state_dict` returned after a restart."""
        if state:
            raise ValueError(f"{self.name} keeps no server state, got {sorted(state)[:3]}")
