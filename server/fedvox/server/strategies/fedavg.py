"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.

Client: train locally and upload the delta (local - global) with its example count.
Server: w_new = w + sum_i n_i * delta_i / sum_i n_i.
"""

from __future__ import annotations

import numpy as np

from fedvox.server.strategies.base import Strategy, Update
from fedvox.wire.tensors import StateDict


class FedAvg(Strategy):
    """Example-weighted mean of the sites' deltas, folded in as each arrives."""

    name = "fedavg"

    def __init__(self) -> None:
        self._global: StateDict = {}
        self._sum: dict[str, np.ndarray] = {}
        self._weight = 0.0

    def begin(self, global_weights: StateDict) -> None:
        self._global = global_weights
        self._sum = {}
        self._weight = 0.0

    def accept(self, update: Update) -> None:
        weight = float(max(update.num_examples, 0))
        if weight == 0:
            return
        for name, delta in update.tensors.items():
            acc = self._sum.get(name)
            if acc is None:
                # the delta's own float width keeps the sum as big as one model;
                # integer buffers (counters) are summed in float64
                dtype = delta.dtype if delta.dtype.kind == "f" else np.dtype(np.float64)
                acc = self._sum[name] = np.zeros(delta.shape, dtype=dtype)
            acc += delta * acc.dtype.type(weight)
        self._weight += weight

    def finish(self) -> StateDict:
        if self._weight == 0:
            return dict(self._global)
        out: StateDict = {}
        for name, base in self._global.items():
            mean = self._sum[name] / self._weight
            if base.dtype.kind == "f":
                out[name] = np.add(base, mean).astype(base.dtype)
            else:  # counters such as num_batches_tracked: round the mean step
                out[name] = np.add(base, np.rint(mean)).astype(base.dtype)
        self._sum = {}
        return out
