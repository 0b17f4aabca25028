"""FedNova: Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020 (plain local SGD/Adam steps: a_i = tau_i).

Client: as FedAvg; the upload header carries its local step count tau_i.
Server: d_i = delta_i / tau_i; w <- w + tau_eff * sum_i p_i d_i, with p_i = n_i / sum n
and tau_eff = sum_i p_i tau_i. Sites that ran more steps no longer pull the model
further just because they ran more steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedvox.server.strategies.base import Update, fold
from fedvox.server.strategies.fedavg import FedAvg


class FedNova(FedAvg):
    """Normalised averaging by each site's local step count."""

    name = "fednova"

    def begin(self, global_weights: Any, context: Any) -> None:
        super().begin(global_weights, context)
        self._steps_weight = 0.0  # sum_i n_i tau_i

    def accept(self, update: Update) -> None:
        if update.num_examples <= 0 or update.local_steps <= 0:
            return  # no steps: nothing to normalise (and nothing learned)
        fold(self._sums, update.tensors, update.num_examples / update.local_steps)
        self._weight += update.num_examples
        self._steps_weight += update.num_examples * update.local_steps

    def mean_delta(self) -> dict[str, np.ndarray]:
        if self._weight == 0:
            return {}
        tau_eff = self._steps_weight / self._weight
        scale = tau_eff / self._weight
        return {k: v * v.dtype.type(scale) for k, v in self._sums.items()}
