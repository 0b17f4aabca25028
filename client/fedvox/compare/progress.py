"""A plain-text progress bar with an ETA on stderr.

The unit of work is one arm at one seed: every arm has the same local-step budget, so each unit
costs about the same. Within a unit the fraction is the rounds done (and the current round's
share of local training) of its federations, averaged when several run at once (local-only).
On a terminal the bar redraws in place; otherwise (a log file) it prints a line whenever a
round or an arm finishes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def round_fraction(status: dict[str, Any]) -> float:
    """How far a federation is, from its server status: finished rounds plus the open round's
    share (submitted results count whole, sites still training their reported progress; a
    progress of 1.0 is a finished task, counted through the results), over the total."""
    total = int(status.get("total_rounds", 0) or 0)
    if status.get("phase") == "done":
        return 1.0
    if total <= 0:
        return 0.0
    done = int(status.get("completed_round", 0) or 0)
    expected = int(status.get("current_expected", 0) or 0)
    current = 0.0
    if expected > 0 and int(status.get("current_round", 0) or 0) > done:
        training = sum(
            p for s in status.get("sites", []) if (p := float(s.get("progress", 0.0))) < 1.0
        )
        current = min(1.0, (int(status.get("current_results", 0) or 0) + training) / expected)
    return min(1.0, (done + current) / total)


class ProgressBar:
    def __init__(
        self,
        total: int,
        already_done: int = 0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int = 24,
    ) -> None:
        self.total = total
        self.done = already_done
        self.skipped = already_done  # finished by an earlier run: not part of the rate
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.width = width
        self.label = ""
        self.parts: list[float] = []
        self.lock = threading.Lock()
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_key: tuple[str, int] | None = None

    def begin(self, label: str, parts: int = 1) -> None:
        with self.lock:
            self.label = label
            self.parts = [0.0] * parts
            self._draw(force=True)

    def update(self, part: int, fraction: float) -> None:
        with self.lock:
            self.parts[part] = max(self.parts[part], fraction)  # never moves backwards
            self._draw()

    def finish(self, note: str = "") -> None:
        with self.lock:
            self.done += 1
            self.parts = []
            self._draw(force=True, note=note)
            if self.live and self.done >= self.total:
                self.stream.write("\n")
                self.stream.flush()

    def message(self, text: str) -> None:
        with self.lock:
            self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
            self.stream.flush()
            self._draw(force=self.live)

    def fraction(self) -> float:
        current = sum(self.parts) / len(self.parts) if self.parts else 0.0
        return min(1.0, (self.done + current) / self.total) if self.total else 1.0

    def eta(self) -> float | None:
        """Seconds left, from this run's pace (units an earlier run finished do not count)."""
        current = sum(self.parts) / len(self.parts) if self.parts else 0.0
        worked = self.done - self.skipped + current
        if worked <= 0:
            return None
        elapsed = self.clock() - self.started
        return elapsed / worked * (self.total - self.done - current)

    def render(self, note: str = "") -> str:
        fraction = self.fraction()
        filled = round(fraction * self.width)
        eta = self.eta()
        current = sum(self.parts) / len(self.parts) if self.parts else 0.0
        where = f" | {self.label} {current:.0%}" if self.parts else ""
        return (
            f"compare [{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%} "
            f"{self.done}/{self.total} arms{where} | "
            f"{format_duration(self.clock() - self.started)} elapsed, "
            f"ETA {format_duration(eta) if eta is not None else '?'}"
            + (f" | {note}" if note else "")
        )

    def _draw(self, force: bool = False, note: str = "") -> None:
        current = sum(self.parts) / len(self.parts) if self.parts else 0.0
        key = (self.label, int(current * 100) // 10)  # a log line per tenth of an arm at most
        if self.live:
            self.stream.write("\r\033[K" + self.render(note))
        elif force or key != self._last_key:
            self.stream.write(self.render(note) + "\n")
        else:
            return
        self._last_key = key
        self.stream.flush()
