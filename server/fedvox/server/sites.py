"""Which sites have registered, when each was last heard from, and what it reported."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from fedvox.wire.errors import WireError, invalid

SITE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass
class Site:
    site_id: str
    num_examples: int
    info: dict[str, str]
    last_seen: float  # wall clock, for display
    last_seen_mono: float  # monotonic, for liveness
    task_id: str = ""
    progress: float = 0.0
    last_metrics: dict[str, float] = field(default_factory=dict)


class SiteRegistry:
    """Not thread-safe by itself: the orchestrator calls it under its lock."""

    def __init__(
        self,
        site_timeout_s: float,
        allowed: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.site_timeout_s = site_timeout_s
        self.allowed = set(allowed)
        self.clock = clock
        self.sites: dict[str, Site] = {}

    def register(self, site_id: str, num_examples: int, info: dict[str, str]) -> Site:
        if not SITE_ID.match(site_id):
            raise invalid(f"site id {site_id!r} must match {SITE_ID.pattern}")
        if self.allowed and site_id not in self.allowed:
            raise WireError(grpc.StatusCode.PERMISSION_DENIED, f"site {site_id!r} is not allowed")
        if num_examples < 0:
            raise invalid(f"num_examples must be >= 0, got {num_examples}")
        site = Site(site_id, num_examples, dict(info), time.time(), self.clock())
        self.sites[site_id] = site
        return site

    def touch(self, site_id: str) -> Site:
        site = self.sites.get(site_id)
        if site is None:
            raise WireError(
                grpc.StatusCode.NOT_FOUND, f"unknown site {site_id!r}: call Register first"
            )
        site.last_seen, site.last_seen_mono = time.time(), self.clock()
        return site

    def is_alive(self, site: Site) -> bool:
        return self.clock() - site.last_seen_mono <= self.site_timeout_s

    def alive_ids(self) -> list[str]:
        """Sites to sample: alive, and without a data problem reported at registration."""
        return sorted(
            s.site_id
            for s in self.sites.values()
            if self.is_alive(s) and "data_error" not in s.info  # fedvox.client.checks.INFO_ERROR
        )
