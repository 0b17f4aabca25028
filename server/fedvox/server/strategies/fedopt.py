"""Server optimizers over the FedAvg mean delta.

FedAvgM: Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
         Federated Visual Classification", 2019.
FedAdagrad, FedAdam, FedYogi: Reddi et al., "Adaptive Federated Optimization",
         ICLR 2021, Algorithm 2 (no bias correction; v starts at tau^2).

Client: exactly as FedAvg. Server: the mean delta D is treated as a pseudo-gradient
step: m <- b1 m + (1 - b1) D; v per variant; w <- w + eta * m / (sqrt(v) + tau).
Integer tensors (counters) take the plain mean delta.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from fedvox.server.strategies.fedavg import FedAvg
from fedvox.wire.tensors import StateDict


@dataclass(frozen=True)
class MomentumParams:
    momentum: float = 0.9  # beta: v <- beta v + D
    lr: float = 1.0  # server learning rate eta: w <- w + eta v

    def __post_init__(self) -> None:
        if not 0 <= self.momentum < 1 or self.lr <= 0:
            raise ValueError("fedavgm: momentum must lie in [0, 1) and lr be > 0")


class _ServerState(FedAvg):
    """Keeps named moment buffers, checkpointed as '<buffer>/<tensor>'."""

    buffers: tuple[str, ...] = ()

    def __init__(self, params: object = None) -> None:
        super().__init__(params)
        self.moments: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffers}

    def state_dict(self) -> StateDict:
        return {f"{b}/{k}": v for b, values in self.moments.items() for k, v in values.items()}

    def load_state_dict(self, state: StateDict) -> None:
        self.moments = {b: {} for b in self.buffers}
        for key, value in state.items():
            buffer, _, name = key.partition("/")
            if buffer not in self.moments:
                raise ValueError(f"{self.name}: unexpected state tensor {key!r}")
            self.moments[buffer][name] = np.array(value)


class FedAvgM(_ServerState):
    """FedAvg with server momentum: v <- beta v + D; w <- w + eta v."""

    name = "fedavgm"
    Params = MomentumParams
    buffers = ("v",)

    def step(self, mean_delta: dict[str, np.ndarray]) -> StateDict:
        v = self.moments["v"]
        step: dict[str, np.ndarray] = {}
        for key, delta in mean_delta.items():
            if self.global_weights[key].dtype.kind != "f":  # counters: the plain mean
                step[key] = delta
                continue
            v[key] = self.params.momentum * v.get(key, np.zeros_like(delta)) + delta
            step[key] = self.params.lr * v[key]
        return super().step(step)


@dataclass(frozen=True)
class AdaptiveParams:
    # server learning rate eta: every coordinate moves about eta per round, whatever the
    # delta's size. At 0.01 the CPU demo's UNet (sites on Adam, lr 0.01) did not learn in 5
    # rounds; at 0.1 FedAdam / FedYogi reached test Dice 0.69 / 0.71 after 3 (FedAvg: 0.85)
    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: larger tau = closer to momentum SGD

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.tau <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("lr and tau must be > 0, beta1 and beta2 in [0, 1)")


class _Adaptive(_ServerState):
    Params = AdaptiveParams
    buffers = ("m", "v")

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """The variant's update of the second moment v from the squared mean delta."""

    def step(self, mean_delta: dict[str, np.ndarray]) -> StateDict:
        p = self.params
        m, v = self.moments["m"], self.moments["v"]
        step: dict[str, np.ndarray] = {}
        for key, delta in mean_delta.items():
            if self.global_weights[key].dtype.kind != "f":  # counters: the plain mean
                step[key] = delta
                continue
            m[key] = p.beta1 * m.get(key, np.zeros_like(delta)) + (1 - p.beta1) * delta
            v[key] = self.second_moment(v.get(key, np.full_like(delta, p.tau**2)), delta**2)
            step[key] = p.lr * m[key] / (np.sqrt(v[key]) + p.tau)
        return FedAvg.step(self, step)


@dataclass(frozen=True)
class AdagradParams(AdaptiveParams):
    # v sums D^2 rather than taking (1 - beta2) of it, so sqrt(v) is about 10x Adam's and the
    # same step needs 10x the lr: at 0.1 the demo stayed at Dice 0.005, at 1.0 it reached 0.71
    lr: float = 1.0


class FedAdagrad(_Adaptive):
    """Server Adagrad on the mean delta (Reddi et al. 2021): v <- v + D^2."""

    name = "fedadagrad"
    Params = AdagradParams

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + delta_sq
        return out


class FedAdam(_Adaptive):
    """Server Adam on the mean delta (Reddi et al. 2021): v <- b2 v + (1 - b2) D^2."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        b2: float = self.params.beta2
        out: np.ndarray = b2 * v + (1 - b2) * delta_sq
        return out


class FedYogi(_Adaptive):
    """Server Yogi on the mean delta (Reddi et al. 2021): v <- v - (1-b2) D^2 sign(v - D^2)."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        b2: float = self.params.beta2
        out: np.ndarray = v - (1 - b2) * delta_sq * np.sign(v - delta_sq)
        return out
