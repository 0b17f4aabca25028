"""FedMA for MONAI 3D UNets: Wang et al., "Federated Learning with Matched Averaging",
ICLR 2020, adapted to a fixed-width network with norm layers and skip connections.

Sites may learn the same feature in different channels; averaging channel i with
channel i then mixes unrelated filters. FedMA first matches every site's output
channels to the reference's (Hungarian algorithm on weight similarity,
`fedma_align.match_to`), permutes each site's tensors consistently (bias, norm
parameters and statistics, the next layer's input channels, through the UNet's
concatenation and residual skips), then averages. Widths stay fixed (see fedma_align).

Modes (`--strategy-param mode=...`):
  oneshot    every round: align each site's model to the current global model, then
             take the example-weighted mean. One communication round per round; use it
             as a drop-in replacement for FedAvg, e.g. with many local steps where sites
             drift apart.
  layerwise  the paper's protocol: phase p freezes (on the sites) the layers whose
             channels were matched in earlier phases; each phase lasts
             `rounds_per_phase` rounds and a pass takes one phase per channel group
             (15 for the default UNet). Slower to converge, closer to the paper.
Client: trains as FedAvg; in layerwise mode it also freezes the `freeze` keys it is sent.
The phase is a function of the round number, so no server state needs checkpointing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvox.server.strategies.base import BatchStrategy, UpdateSet
from fedvox.server.strategies.fedma_align import (
    ChannelGroup,
    layer_phase_keys,
    matched_average,
    num_phases,
    unet_channel_groups,
)
from fedvox.wire.tensors import Array, Schema, StateDict


@dataclass(frozen=True)
class FedMAParams:
    mode: str = "oneshot"  # "oneshot" or "layerwise"
    iterations: int = 3  # re-alignments to the running mean per round
    rounds_per_phase: int = 1  # layerwise: rounds spent in each phase

    def __post_init__(self) -> None:
        if self.mode not in ("oneshot", "layerwise"):
            raise ValueError(f"fedma: mode must be oneshot or layerwise, got {self.mode!r}")
        if self.iterations < 1 or self.rounds_per_phase < 1:
            raise ValueError("fedma: iterations and rounds_per_phase must be >= 1")


class _FullWeights(Mapping[str, Array]):
    """One site's full weights (global + delta), computed key by key on access, so the
    spilled blobs are never turned into N models in memory."""

    def __init__(self, base: StateDict, updates: UpdateSet, site: str) -> None:
        self.base, self.updates, self.site = base, updates, site

    def __getitem__(self, key: str) -> Array:
        base = self.base[key]
        return np.add(base, self.updates.tensor(self.site, key)).astype(base.dtype, copy=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


class FedMA(BatchStrategy):
    """Permutation-matched averaging of the sites' UNets (one-shot or layer-wise)."""

    name = "fedma"
    Params = FedMAParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.groups: list[ChannelGroup] = []

    def initialize(self, schema: Schema) -> None:
        self.groups = unet_channel_groups(schema)  # ValueError names a key it cannot place

    def phase(self, round_: int) -> int:
        per_phase: int = self.params.rounds_per_phase
        return ((max(round_, 1) - 1) // per_phase) % (num_phases(self.groups) + 1)

    def client_config(self, round_: int) -> dict[str, Any]:
        if self.params.mode != "layerwise" or not self.groups:
            return {}
        return {"freeze": layer_phase_keys(self.groups, self.phase(round_))}

    def aggregate(self, updates: UpdateSet) -> StateDict:
        sites = [s for s in updates.sites if updates.num_examples(s) > 0] or list(updates.sites)
        fulls = [_FullWeights(self.global_weights, updates, s) for s in sites]
        weights = [float(max(updates.num_examples(s), 1)) for s in sites]
        # aligning to the global model keeps channel order stable from round to round
        return matched_average(
            fulls,
            weights,
            self.groups,
            reference=self.global_weights,
            iterations=self.params.iterations,
        )
