"""The FedAvg family: schemes whose server step is the example-weighted mean delta.

FedAvg:  McMahan et al., "Communication-Efficient Learning of Deep Networks from
         Decentralized Data", AISTATS 2017.
FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
FedBN:   Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
         Normalization", ICLR 2021.
FedPer:  Arivazhagan et al., "Federated Learning with Personalization Layers", 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedvox.server.strategies.base import StreamingStrategy, Update, apply_step, fold, zero_sums
from fedvox.wire.tensors import StateDict, schema_of


class FedAvg(StreamingStrategy):
    """Example-weighted mean of the sites' deltas: w <- w + sum_i n_i d_i / sum_i n_i.

    Client: train locally, upload local - global with its example count.
    """

    name = "fedavg"

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._sums: dict[str, np.ndarray] = {}
        self._weight = 0.0

    def begin(self, global_weights: StateDict, context: Any) -> None:
        super().begin(global_weights, context)
        schema = schema_of(global_weights)
        self._sums, self._weight = zero_sums({**schema, **self.upload_extras(schema)}), 0.0

    def accept(self, update: Update) -> None:
        if update.num_examples > 0:
            fold(self._sums, update.tensors, float(update.num_examples))
            self._weight += update.num_examples

    def mean_delta(self) -> dict[str, np.ndarray]:
        """The weighted mean delta of the round (empty when no site had examples)."""
        if self._weight == 0:
            return {}
        return {k: v / v.dtype.type(self._weight) for k, v in self._sums.items()}

    def finish(self) -> StateDict:
        return self.step(self.mean_delta())

    def step(self, mean_delta: dict[str, np.ndarray]) -> StateDict:
        """The server update from the mean delta; server optimizers override this."""
        self._sums = {}
        return apply_step(self.global_weights, mean_delta)


@dataclass(frozen=True)
class ProxParams:
    mu: float = 0.01  # weight of the proximal term mu/2 * ||w - w_global||^2

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ValueError(f"fedprox: mu must be >= 0, got {self.mu}")


class FedProx(FedAvg):
    """FedAvg on the server; the client adds mu/2 * ||w - w_global||^2 to its loss."""

    name = "fedprox"
    Params = ProxParams

    def client_config(self, round_: int) -> dict[str, Any]:
        return {"proximal_mu": float(self.params.mu)}


class FedBN(FedAvg):
    """FedAvg, but the norm layers (parameters and statistics) stay at each site.

    Client: selects the norm layers by module type (BatchNorm/InstanceNorm/GroupNorm/
    LayerNorm), never uploads them, and evaluates with its own. With MONAI's instance
    norm the local keys are the affine scale and shift (there are no running statistics).
    """

    name = "fedbn"

    def client_config(self, round_: int) -> dict[str, Any]:
        return {"local_keys": "norm"}


@dataclass(frozen=True)
class PerParams:
    head_layers: int = 1  # how many of the last conv layers stay at each site

    def __post_init__(self) -> None:
        if self.head_layers < 1:
            raise ValueError(f"fedper: head_layers must be >= 1, got {self.head_layers}")


class FedPer(FedAvg):
    """FedAvg over the base; the head stays at each site.

    The head is the last `head_layers` conv layers, chosen by module type, with the
    norm/activation modules after them."""

    name = "fedper"
    Params = PerParams

    def client_config(self, round_: int) -> dict[str, Any]:
        return {"local_keys": "head", "head_layers": int(self.params.head_layers)}
