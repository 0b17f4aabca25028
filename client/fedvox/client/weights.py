"""torch state_dicts <-> the numpy dicts the wire helpers speak."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedvox.wire.tensors import StateDict


def to_numpy(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().to("cpu").contiguous().numpy() for k, v in state.items()}


def to_torch(arrays: StateDict) -> dict[str, torch.Tensor]:
    # np.array copies out of the read-only receive buffer; torch wants writable memory
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def delta(local: StateDict, base: StateDict) -> StateDict:
    """local - base, key by key; both must hold the same keys."""
    return {k: np.subtract(local[k], base[k], dtype=local[k].dtype) for k in base}
