"""Aggregation schemes, chosen by registry name (never by import path)."""

from __future__ import annotations

from fedvox.server.strategies.base import Strategy, Update
from fedvox.server.strategies.fedavg import FedAvg

REGISTRY: dict[str, type[Strategy]] = {"fedavg": FedAvg}


def create(name: str) -> Strategy:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}"
        ) from None


__all__ = ["REGISTRY", "Strategy", "Update", "create"]
