"""Aggregation schemes, chosen by registry name (never by import path)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from fedvox.server.strategies.base import (
    BatchStrategy,
    RoundContext,
    Strategy,
    StreamingStrategy,
    Update,
    UpdateSet,
)
from fedvox.server.strategies.fedavg import FedAvg, FedBN, FedPer, FedProx
from fedvox.server.strategies.fedma import FedMA
from fedvox.server.strategies.fednova import FedNova
from fedvox.server.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedvox.server.strategies.robust import Krum, Median, MultiKrum, TrimmedMean
from fedvox.server.strategies.scaffold import Scaffold
from fedvox.wire.settings import ConfigError, coerce_value

REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Scaffold,
        FedNova,
        FedBN,
        FedPer,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
        FedMA,
    )
}


def create(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Build a registered scheme, checking its parameters by name and type."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown strategy {name!r}; known: {known}") from None
    hints = typing.get_type_hints(cls.Params)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    values: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if key not in fields:
            accepted = ", ".join(fields) or "none"
            raise ConfigError(f"strategy {name!r} has no parameter {key!r} (accepted: {accepted})")
        values[key] = coerce_value(hints[key], value, f"{name}.{key}")
    try:
        return cls(cls.Params(**values))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


__all__ = [
    "REGISTRY",
    "BatchStrategy",
    "RoundContext",
    "Strategy",
    "StreamingStrategy",
    "Update",
    "UpdateSet",
    "create",
]
