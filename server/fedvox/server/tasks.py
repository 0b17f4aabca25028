"""Domain objects for tasks and results, independent of the proto classes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TaskKind(enum.StrEnum):
    WAIT = "wait"
    INIT = "init"
    TRAIN = "train"
    EVALUATE = "evaluate"
    STOP = "stop"


class Payload(enum.StrEnum):
    NONE = "none"
    FULL = "full"
    DELTA = "delta"


# What each task kind must upload.
EXPECTED_PAYLOAD = {
    TaskKind.INIT: Payload.FULL,
    TaskKind.TRAIN: Payload.DELTA,
    TaskKind.EVALUATE: Payload.NONE,
}


@dataclass(frozen=True)
class Task:
    task_id: str
    kind: TaskKind
    round: int
    site_id: str
    config_json: str = ""
    global_digest: str = ""
    global_size: int = 0


@dataclass(frozen=True)
class ResultHeader:
    """The Submit header, as the orchestrator sees it."""

    site_id: str
    task_id: str
    round: int
    payload: Payload
    num_examples: int
    digest: str
    size: int
    local_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
