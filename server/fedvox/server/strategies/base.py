"""The one extension point for aggregation schemes, and its two shapes.

A scheme is pure: no I/O, no gRPC, no clocks. The orchestrator drives it:

    begin(global_weights, context)          once per round
    StreamingStrategy.accept(update)        once per update, in a canonical site order
    BatchStrategy.aggregate(updates)        once, with every update (read from disk)
    finish() / aggregate() -> new weights

The FedAvg family folds updates as they arrive, so server memory does not grow
with the number of sites. Schemes that need every update at once (median,
Krum, FedMA) get them as `UpdateSet`, whose tensors are read from the blobs the
server spilled to disk, one tensor of all sites at a time.

A scheme may also ask the client to behave differently (`client_config`, e.g.
FedProx's mu), publish extra tensors with the global model (`download_extras`,
e.g. SCAFFOLD's control variate c) and expect extra tensors in each upload
(`upload_extras`, e.g. SCAFFOLD's delta c_i). Its server state (optimizer
moments, control variates) is checkpointed with every round via `state_dict`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy.linalg import blas

from fedvox.wire.tensors import DTYPES, Array, Schema, StateDict, TensorSpec


@dataclass(frozen=True)
class Update:
    """One site's accepted result for a training round."""

    site_id: str
    num_examples: int
    tensors: StateDict  # deltas: local weights minus the round's global weights (+ extras)
    local_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundContext:
    """What a scheme may know about the round besides the weights."""

    round: int
    sampled: tuple[str, ...]  # sites asked to train this round
    total_sites: int  # sites registered with the federation
    seed: int = 0


class UpdateSet(Protocol):
    """Every accepted update of a round, readable one tensor at a time."""

    @property
    def sites(self) -> Sequence[str]:
        """Site ids, in canonical (sorted) order."""

    def num_examples(self, site: str) -> int:
        """The site's example count."""

    def local_steps(self, site: str) -> int:
        """The site's local step count."""

    def tensor(self, site: str, name: str) -> Array:
        """One tensor of one site's upload (a read-only view of the spilled blob)."""


@dataclass(frozen=True)
class NoParams:
    """A scheme without parameters."""


class Strategy:
    """Base of every scheme. Subclass StreamingStrategy or BatchStrategy, not this."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Any]] = NoParams  # a frozen dataclass: names, types, defaults

    def __init__(self, params: Any = None) -> None:
        self.params = self.Params() if params is None else params
        self.global_weights: StateDict = {}
        self.context = RoundContext(0, (), 0)

    def initialize(self, schema: Schema) -> None:
        """Called once the model's schema is known (after init, and on resume)."""

    def client_config(self, round_: int) -> dict[str, Any]:
        """Settings for the client half of the scheme, sent in every task's config."""
        return {}

    def download_extras(self) -> StateDict:
        """Extra tensors published with the global model (names carry a scheme prefix)."""
        return {}

    def upload_extras(self, schema: Schema) -> Schema:
        """Extra tensors every upload must carry, given the model's schema."""
        return {}

    def begin(self, global_weights: StateDict, context: RoundContext) -> None:
        """Start a round from `global_weights` (read-only; valid until the round ends)."""
        self.global_weights = global_weights
        self.context = context

    def state_dict(self) -> StateDict:
        """Server-side state to checkpoint with the round (optimizer moments, ...)."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what `state_dict` returned after a restart."""
        if state:
            raise ValueError(f"{self.name} keeps no server state, got {sorted(state)[:3]}")


class StreamingStrategy(Strategy, ABC):
    """Folds each update into running sums as it arrives."""

    @abstractmethod
    def accept(self, update: Update) -> None:
        """Fold in one update; it has already passed schema and finiteness checks."""

    @abstractmethod
    def finish(self) -> StateDict:
        """Return the new global weights; at least one update was accepted."""


class BatchStrategy(Strategy, ABC):
    """Needs every update at once."""

    @abstractmethod
    def aggregate(self, updates: UpdateSet) -> StateDict:
        """Return the new global weights from the round's updates (at least one)."""


def params_doc(cls: type[Strategy]) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each parameter, for `fedvox strategies`."""
    return [(f.name, str(f.type), f.default) for f in dataclasses.fields(cls.Params)]


def weighted_delta_sums(
    updates: Iterator[Update] | Sequence[Update],
) -> tuple[dict[str, np.ndarray], float]:
    """sum_i n_i * delta_i over updates, and sum_i n_i."""
    sums: dict[str, np.ndarray] = {}
    total = 0.0
    for update in updates:
        fold(sums, update.tensors, float(update.num_examples))
        total += update.num_examples
    return sums, total


def zero_sums(schema: Schema) -> dict[str, np.ndarray]:
    """Running sums for `schema`, zero and already written, with `fold`'s widths.

    A scheme allocates them when its round begins: the server folds each upload from a
    read-only map of its journal file, so none can become the sum, and sums allocated by the
    first fold would be written while that upload's pages are mapped, doubling its memory.
    Folding into zeros rounds exactly as scaling does: 0 + w*x is w*x (a zero product comes
    out +0.0, as -0.0 + 0.0 is +0.0)."""
    sums = {}
    for name, spec in schema.items():
        dtype = DTYPES[spec.dtype] if DTYPES[spec.dtype].kind == "f" else np.dtype(np.float64)
        sums[name] = np.full(spec.shape, 0, dtype=dtype)  # written: resident before any upload
    return sums


def fold(sums: dict[str, np.ndarray], tensors: Mapping[str, Array], weight: float) -> None:
    """sums[k] += weight * tensors[k].

    Sums keep the tensor's own float width (one model's worth of memory); integer
    counters are summed in float64. The orchestrator folds in sorted site order, so
    the rounding, and hence the result, does not depend on arrival order.
    """
    for name, value in tensors.items():
        acc = sums.get(name)
        if acc is not None and _axpy(acc, value, weight):
            continue  # one fused pass over each array
        if acc is None:
            dtype = value.dtype if value.dtype.kind == "f" else np.dtype(np.float64)
            out = np.empty(value.shape, dtype=dtype)  # an array even for 0-d tensors
            sums[name] = np.multiply(value, dtype.type(weight), out=out, dtype=dtype)
        else:  # small, or a width BLAS lacks: a temporary of one tensor at most
            acc += np.multiply(value, acc.dtype.type(weight), dtype=acc.dtype)


# Below this many elements numpy's two passes beat a BLAS call's overhead; the rule depends
# on the tensor alone, so a fresh upload and one read back from the journal round alike.
_AXPY_MIN = 1 << 15
_AXPY = {np.dtype(np.float32): blas.saxpy, np.dtype(np.float64): blas.daxpy}


def _axpy(acc: np.ndarray, value: Array, weight: float) -> bool:
    """acc += weight * value with BLAS axpy: multiply and add fused into one pass over each
    array at memory bandwidth (numpy needs a temporary or a second pass). False when the
    arrays don't qualify (small, mixed or non-float dtypes, not contiguous); acc untouched."""
    kernel = _AXPY.get(acc.dtype)
    if (
        kernel is None
        or value.dtype != acc.dtype
        or acc.size < _AXPY_MIN
        or not (acc.flags.c_contiguous and value.flags.c_contiguous)
    ):
        return False
    flat = acc.reshape(-1)
    out = kernel(value.reshape(-1), flat, a=float(weight))
    if out.ctypes.data != flat.ctypes.data:  # f2py works in place on a contiguous y
        flat[...] = out
    return True


def apply_step(base: StateDict, step: Mapping[str, np.ndarray]) -> StateDict:
    """base + step, key by key, keeping each tensor's dtype (integers are rounded)."""
    out: StateDict = {}
    for name, value in base.items():
        change = step.get(name)
        if change is None:
            out[name] = value
        elif value.dtype.kind == "f":
            out[name] = np.add(value, change).astype(value.dtype, copy=False)
        else:
            out[name] = np.add(value, np.rint(change)).astype(value.dtype)
    return out


def float_schema(schema: Schema, prefix: str) -> Schema:
    """The float tensors of `schema`, renamed with `prefix` (for per-key extras)."""
    return {
        prefix + k: TensorSpec(s.shape, s.dtype)
        for k, s in schema.items()
        if s.dtype.startswith("F")
    }
