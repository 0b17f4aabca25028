"""The round loop: plan -> publish -> collect until done or deadline -> aggregate -> checkpoint.

Service threads call the public methods (register, next_task, begin_submit,
accept, heartbeat, status); the loop runs in its own thread. One condition
variable guards all state, and every wait is bounded so that a dead site can
only ever cost one round deadline.

Phases of a run: INIT (one site uploads the initial weights, since the server
holds no torch) -> EVALUATE round 0 on the test split (the baseline) ->
TRAIN rounds 1..R -> EVALUATE the final model -> done (sites get STOP).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fedvox.server.config import ServerConfig
from fedvox.server.journal import RoundJournal, SpilledUpdateSet, StagedBlob, write_json_atomic
from fedvox.server.sites import SiteRegistry
from fedvox.server.store import Checkpoint, Store
from fedvox.server.strategies import (
    BatchStrategy,
    RoundContext,
    Strategy,
    StreamingStrategy,
    Update,
)
from fedvox.server.tasks import EXPECTED_PAYLOAD, Payload, ResultHeader, Task, TaskKind
from fedvox.wire.digest import DIGEST_PATTERN
from fedvox.wire.errors import WireError, invalid
from fedvox.wire.taskconfig import TaskConfig
from fedvox.wire.tensors import Schema, StateDict, check_schema, schema_of

log = logging.getLogger(__name__)
_DELTA_SLACK = 1 << 20  # a delta's header may differ slightly from the global blob's


class Stopping(Exception):
    """Raised inside the loop when the server is shutting down."""


@dataclass
class Result:
    num_examples: int
    metrics: dict[str, float]
    digest: str


@dataclass
class OpenRound:
    round: int
    kind: TaskKind
    tasks: dict[str, Task]  # by task id
    started: float
    deadline: float
    journal: RoundJournal  # the plan and every accepted result, on disk
    results: dict[str, Result] = field(default_factory=dict)  # by site id
    folded: int = 0  # how many sites of the sorted sample a streaming scheme has folded

    @property
    def refused(self) -> dict[str, str]:
        """By site id: why its update was refused for its content; the round waits no more
        for it. Kept by the journal, so a reopened round has them too."""
        return self.journal.refusals

    def sorted_sites(self) -> list[str]:
        return sorted(t.site_id for t in self.tasks.values())

    def pending_sites(self) -> list[str]:
        return [
            t.site_id
            for t in self.tasks.values()
            if t.site_id not in self.results and t.site_id not in self.refused
        ]

    def is_open(self, task_id: str) -> bool:
        task = self.tasks.get(task_id)
        return task is not None and task.site_id not in self.refused


class Orchestrator:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        strategy: Strategy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.strategy = strategy
        self.clock = clock
        self.cond = threading.Condition()
        self.registry = SiteRegistry(config.site_timeout_s, config.allowed_sites, clock)
        self.stopping = False
        self.done = False
        self.open: OpenRound | None = None
        self.federation_id = uuid.uuid4().hex[:12]
        self.completed_round = -1  # -1: no global model yet
        self.global_weights: StateDict | None = None
        self.global_digest = ""  # the model itself (status, DownloadModel)
        self.publish_digest = ""  # what train tasks download: the model + scheme extras
        self.publish_size = 0
        self.schema: Schema = {}
        self.upload_schema: Schema = {}  # the model's schema + the scheme's upload extras
        self._journal_root = store.root / "journal"
        self.history: list[dict[str, Any]] = []
        self.closed_tasks: dict[str, int] = {}  # task id -> round, for precise late-result errors
        # task id -> (site, digest) of every counted result, so a replay stays idempotent
        # even after its round has closed
        self.accepted: dict[str, tuple[str, str]] = {}
        self._history_path = store.root / "history.json"
        self._sites_path = store.root / "sites.json"
        self._resume()
        self._recovered = self._recover_journals()

    # ---- state on disk ----

    def _resume(self) -> None:
        if self._sites_path.exists():  # sites need not register again after a restart
            for site in json.loads(self._sites_path.read_text()):
                self.registry.register(site["site_id"], site["num_examples"], site["info"])
        checkpoint = self.store.latest()
        if checkpoint is None:
            log.info("resume: no checkpoint in %s, starting fresh", self.store.root)
            return
        self.strategy.load_state_dict(self.store.load_strategy_state(checkpoint))
        self._set_global(checkpoint)
        self.completed_round = checkpoint.round
        self.federation_id = str(checkpoint.meta.get("federation_id", self.federation_id))
        if self._history_path.exists():
            entries = json.loads(self._history_path.read_text())
            # an entry newer than the checkpoint belongs to a round that will be rerun
            self.history = [h for h in entries if h["round"] <= checkpoint.round]
        log.info("resume: continuing after round %d from %s", checkpoint.round, checkpoint.path)

    def _recover_journals(self) -> dict[tuple[str, int], RoundJournal]:
        """Open rounds a killed server left behind, keyed (kind, round); stale ones go."""
        live = {}
        for journal in RoundJournal.recover(self._journal_root):
            kind, round_ = TaskKind(journal.plan["kind"]), int(journal.plan["round"])
            done = (
                self._evaluated(round_)
                if kind is TaskKind.EVALUATE
                else round_ <= self.completed_round
            )
            if done:
                journal.discard()
            else:
                live[(str(kind), round_)] = journal
                log.info(
                    "resume: round %d (%s) reopens with %d accepted result(s)",
                    round_,
                    kind,
                    len(journal.entries),
                )
        return live

    def _set_global(self, checkpoint: Checkpoint) -> None:
        # serve and aggregate from the checkpoint's bytes, not the buffers they came from
        self.global_weights = self.store.load_weights(checkpoint)
        self.global_digest = checkpoint.digest
        self.publish_digest, self.publish_size = checkpoint.publish
        self.schema = schema_of(self.global_weights)
        self.strategy.initialize(self.schema)
        self.upload_schema = {**self.schema, **self.strategy.upload_extras(self.schema)}

    def _save_history(self) -> None:
        write_json_atomic(self._history_path, self.history)

    # ---- called by service threads ----

    def register(self, site_id: str, num_examples: int, info: dict[str, str]) -> None:
        with self.cond:
            self.registry.register(site_id, num_examples, info)
            log.info("sites: %s registered with %d examples", site_id, num_examples)
            write_json_atomic(
                self._sites_path,
                [
                    {"site_id": s.site_id, "num_examples": s.num_examples, "info": s.info}
                    for s in self.registry.sites.values()
                ],
            )
            self.cond.notify_all()

    def next_task(self, site_id: str, timeout: float) -> Task | None:
        """Long-poll: the site's open task, a STOP task when done, or None (= WAIT)."""
        deadline = self.clock() + min(timeout, self.config.poll_timeout_s)
        with self.cond:
            self.registry.touch(site_id)
            while True:
                if self.done:
                    return Task("", TaskKind.STOP, self.completed_round, site_id)
                task = self._open_task_for(site_id)
                remaining = deadline - self.clock()
                if task is not None or self.stopping or remaining <= 0:
                    return task
                self.cond.wait(remaining)

    def _open_task_for(self, site_id: str) -> Task | None:
        if self.open is None or site_id in self.open.results or site_id in self.open.refused:
            return None
        for task in self.open.tasks.values():
            if task.site_id == site_id:
                self.registry.sites[site_id].task_id = task.task_id
                return task
        return None

    def touch(self, site_id: str) -> None:
        with self.cond:
            self.registry.touch(site_id)

    def heartbeat(self, site_id: str, task_id: str, progress: float) -> bool:
        """Record liveness; True asks the site to abort `task_id` (its round has closed)."""
        with self.cond:
            site = self.registry.touch(site_id)
            if not math.isfinite(progress):
                raise invalid(f"progress {progress} is not a finite number")
            site.progress = min(max(progress, 0.0), 1.0)
            return bool(task_id) and (self.open is None or not self.open.is_open(task_id))

    def blob_path(self, digest: str) -> Path:
        path = self.store.blob_path(digest)
        if path is None:
            raise WireError(grpc.StatusCode.NOT_FOUND, f"no blob with digest {digest!r}")
        return path

    def current_model(self) -> Path:
        with self.cond:
            if not self.global_digest:
                raise WireError(grpc.StatusCode.FAILED_PRECONDITION, "no global model yet")
            return self.blob_path(self.global_digest)

    def begin_submit(self, header: ResultHeader) -> bool:
        """Check a Submit header before any bytes are read; True = a replay of a counted result.

        Raises WireError for anything the upload may not do."""
        with self.cond:
            self.registry.touch(header.site_id)
            if self._is_replay(header):
                return True
            task = self._task_for_result(header)
            self._check_header(task, header)
            try:
                _check_numbers(header)
            except WireError as exc:
                raise self.refuse_content(header, exc) from None
            max_size = int(self.config.max_blob_mb * 1e6)
            if task.kind is TaskKind.TRAIN:
                max_size = min(max_size, self.publish_size + _DELTA_SLACK)
            if header.size > max_size:
                raise WireError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"declared size {header.size} exceeds the cap of {max_size} bytes",
                )
            return False

    def _task_for_result(self, header: ResultHeader) -> Task:
        if self.open is not None and header.task_id in self.open.tasks:
            task = self.open.tasks[header.task_id]
        elif header.task_id in self.closed_tasks:
            round_ = self.closed_tasks[header.task_id]
            raise WireError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {header.task_id} of round {round_} is closed; late results are refused",
            )
        else:
            raise WireError(grpc.StatusCode.NOT_FOUND, f"unknown task {header.task_id!r}")
        if task.site_id != header.site_id:
            raise WireError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"task {header.task_id} was assigned to another site, not {header.site_id!r}",
            )
        if header.round != task.round:
            raise WireError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {header.task_id} belongs to round {task.round}, not {header.round}",
            )
        reason = self.open.refused.get(task.site_id)
        if reason is not None:
            raise WireError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {header.task_id} of round {task.round} ended when its update was refused "
                f"({reason}); this site takes part again from the next round",
            )
        return task

    def _check_header(self, task: Task, header: ResultHeader) -> None:
        expected = EXPECTED_PAYLOAD[task.kind]
        if header.payload is not expected:
            raise invalid(
                f"a {task.kind} task must upload payload {expected}, not {header.payload}"
            )
        if expected is Payload.NONE:
            if header.size or header.digest:
                raise invalid("an evaluation result carries no blob: size and digest must be empty")
        elif not DIGEST_PATTERN.match(header.digest):
            raise invalid(
                f"digest {header.digest!r} is not a lower-case hex BLAKE3 digest (64 characters)"
            )

    def refuse_content(self, header: ResultHeader, error: WireError) -> WireError:
        """Record that the site's update was refused for what it holds, not for how it
        travelled; returns the error to answer with.

        The same update would be refused again (NaN, a wrong name, shape or dtype, a negative
        count), so retrying cannot help: the round stops waiting for this site and may close
        without it (quorum still applies), and the site takes part again from the next round.
        Transport failures (a truncated stream, a digest mismatch) are not recorded here, so
        their task stays open for a retry. The refusal is journalled with the round, so a
        server restarted mid-round does not give the site its task again."""
        with self.cond:
            open_ = self.open
            task = open_.tasks.get(header.task_id) if open_ is not None else None
            if (
                open_ is None
                or task is None
                or task.site_id != header.site_id
                or header.site_id in open_.results
            ):
                return error
            if header.site_id not in open_.refused:
                try:
                    open_.journal.refuse(header.site_id, header.task_id, error.message)
                except OSError as exc:  # refused all the same, until a restart
                    log.warning("round %d: could not journal a refusal: %s", open_.round, exc)
            self.registry.sites[header.site_id].task_id = ""
            log.warning(
                "round %d: refused the update of %s (%s); the round no longer waits for it",
                open_.round,
                header.site_id,
                error.message,
            )
            self.cond.notify_all()
        return WireError(
            error.code,
            f"{error.message}; the round no longer waits for this site, "
            "which takes part again from the next round",
        )

    def _is_replay(self, header: ResultHeader) -> bool:
        """True for an exact resend of a counted result; a conflicting one is refused."""
        if header.task_id not in self.accepted:
            return False
        site, digest = self.accepted[header.task_id]
        if site != header.site_id:
            raise WireError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"task {header.task_id} was assigned to another site, not {header.site_id!r}",
            )
        if digest != header.digest:
            raise WireError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"task {header.task_id} already has a different result",
            )
        return True

    def open_stage(self, header: ResultHeader) -> StagedBlob:
        """A file in the open round's journal for this upload to be written into as it
        arrives (the caller discards it unless `accept` counts it)."""
        with self.cond:
            self._task_for_result(header)
            assert self.open is not None
            journal = self.open.journal
        try:
            return journal.open_stage(header.size)
        except OSError as exc:
            raise self.journal_failed(header, exc) from None

    def accept(self, header: ResultHeader, tensors: StateDict, staged: StagedBlob | None) -> bool:
        """Count a checked result; returns False when it was a replay.

        `staged` holds the blob as received; it is fsynced before the result counts, so a
        killed server finds it again; that wait happens outside the lock."""
        with self.cond:
            if self._is_replay(header):
                return False
            task = self._task_for_result(header)  # the round may have closed during the upload
            try:
                self._check_tensors(task, tensors)
            except WireError as exc:
                raise self.refuse_content(header, exc) from None
        try:
            path = staged.finish() if staged is not None else None
        except OSError as exc:
            raise self.journal_failed(header, exc) from None
        return self._count(header, tensors, path)

    def journal_failed(self, header: ResultHeader, exc: OSError) -> WireError:
        """The round closed (its journal removed) or the disk failed."""
        with self.cond:
            self._task_for_result(header)  # FAILED_PRECONDITION if the round closed
        return WireError(grpc.StatusCode.UNAVAILABLE, f"cannot journal the result: {exc}")

    def _check_tensors(self, task: Task, tensors: StateDict) -> None:
        if task.kind is TaskKind.TRAIN:
            check_schema(tensors, self.upload_schema)
        elif task.kind is TaskKind.INIT and not tensors:
            raise invalid("initial weights hold no tensors")

    def _count(self, header: ResultHeader, tensors: StateDict, staged: Path | None) -> bool:
        with self.cond:
            if self._is_replay(header):  # a concurrent upload of the same task won the race
                return False
            task = self._task_for_result(header)  # closed while we were writing?
            round_ = self.open
            assert round_ is not None
            round_.journal.commit(
                staged,
                header.site_id,
                task.task_id,
                header.digest,
                header.num_examples,
                header.local_steps,
                header.metrics,
            )
            round_.results[header.site_id] = Result(
                header.num_examples, dict(header.metrics), header.digest
            )
            self.accepted[header.task_id] = (header.site_id, header.digest)
            fresh = Update(
                header.site_id,
                header.num_examples,
                tensors,
                header.local_steps,
                dict(header.metrics),
            )
            self._fold_ready(round_, fresh=fresh)
            site = self.registry.sites[header.site_id]
            site.last_metrics, site.task_id, site.progress = dict(header.metrics), "", 1.0
            log.info(
                "round %d: accepted %s from %s (%d/%d)",
                task.round,
                task.kind,
                header.site_id,
                len(round_.results),
                len(round_.tasks),
            )
            self.cond.notify_all()
            return True

    def status(self) -> dict[str, Any]:
        with self.cond:
            open_ = self.open
            phase = "done" if self.done else ("running" if open_ else "waiting-for-sites")
            return {
                "federation_id": self.federation_id,
                "phase": phase,
                "completed_round": max(self.completed_round, 0),
                "total_rounds": self.config.rounds,
                "current_round": open_.round if open_ else 0,
                "current_kind": str(open_.kind) if open_ else "",
                "current_results": len(open_.results) if open_ else 0,
                "current_expected": len(open_.tasks) if open_ else 0,
                "sites": [
                    {"site": s, "alive": self.registry.is_alive(s)}
                    for s in self.registry.sites.values()
                ],
                "history": list(self.history),
                "global_digest": self.global_digest,
                "strategy": self.strategy.name,
            }

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    # ---- the loop ----

    def run(self) -> None:
        try:
            while self.global_weights is None:
                self._run_round(TaskKind.INIT, 0)
            while self.config.evaluate and not self._evaluated(0):
                self._run_round(TaskKind.EVALUATE, 0)
            while self.completed_round < self.config.rounds:
                self._run_round(TaskKind.TRAIN, self.completed_round + 1)
            while self.config.evaluate and not self._evaluated(self.config.rounds):
                self._run_round(TaskKind.EVALUATE, self.config.rounds)
        except Stopping:
            log.info("orchestrator: stopping")
            return
        with self.cond:
            self.done = True
            self.cond.notify_all()
        log.info("orchestrator: federation complete after %d rounds", self.completed_round)

    def _evaluated(self, round_: int) -> bool:
        return any(h["round"] == round_ and h["kind"] == TaskKind.EVALUATE for h in self.history)

    def _run_round(self, kind: TaskKind, round_: int) -> None:
        """One attempt at a round; returns having either completed it or given it up."""
        with self.cond:
            recovered = self._recovered.pop((str(kind), round_), None)
            if recovered is not None:
                open_ = self._reopen_round(recovered)
                sample = open_.sorted_sites()
            else:
                sample = self._wait_and_sample(kind, round_)
                open_ = self._open_round(kind, round_, sample)
            log.info(
                "round %d: %s with %d site(s): %s", round_, kind, len(sample), ", ".join(sample)
            )
            while not self._round_over(open_):
                self.cond.wait(min(1.0, max(open_.deadline - self.clock(), 0.01)))
            self.open = None
            self.closed_tasks.update({t: round_ for t in open_.tasks})
            for site in open_.tasks.values():
                self.registry.sites[site.site_id].task_id = ""
            needed = (
                1 if kind is TaskKind.INIT else max(1, math.ceil(self.config.quorum * len(sample)))
            )
            if len(open_.results) < needed:
                log.warning(
                    "round %d: %d of %d result(s), quorum is %d: retrying the round",
                    round_,
                    len(open_.results),
                    len(sample),
                    needed,
                )
                open_.journal.discard()
                return
            try:
                self._complete(open_)
            except (ValueError, ArithmeticError, OSError) as exc:
                # a scheme or the disk failed on this round's updates: keep the last
                # checkpoint and rerun the round rather than end the federation
                log.exception("round %d: aggregation failed (%s); retrying the round", round_, exc)
                open_.journal.discard()

    def _wait_and_sample(self, kind: TaskKind, round_: int) -> list[str]:
        attempt = sum(1 for t in self.closed_tasks.values() if t == round_)
        while True:
            if self.stopping:
                raise Stopping
            alive = self.registry.alive_ids()
            if len(alive) >= self.config.min_sites:
                break
            self.cond.wait(1.0)
        count = (
            1
            if kind is TaskKind.INIT
            else max(self.config.min_sites, math.ceil(self.config.fraction * len(alive)))
        )
        # seeded by run seed, round, kind and attempt, so a rerun samples the same sites
        rng = random.Random(f"{self.config.seed}:{round_}:{kind}:{attempt}")
        return sorted(rng.sample(alive, min(count, len(alive))))

    def _open_round(self, kind: TaskKind, round_: int, sample: list[str]) -> OpenRound:
        config = TaskConfig(
            model=self.config.model,
            train=self.config.train,
            splits=self._splits(kind, round_),
            strategy=self.strategy.client_config(round_),
        ).to_json()
        tasks = [
            Task(
                uuid.uuid4().hex, kind, round_, site, config, self.publish_digest, self.publish_size
            )
            for site in sample
        ]
        plan = {"kind": str(kind), "round": round_, "tasks": [dataclasses.asdict(t) for t in tasks]}
        return self._start(RoundJournal.create(self._journal_root, round_, plan))

    def _reopen_round(self, journal: RoundJournal) -> OpenRound:
        """A round a killed server left open: same tasks, its accepted results still count."""
        open_ = self._start(journal)
        for site, entry in sorted(journal.entries.items()):
            open_.results[site] = Result(entry.num_examples, dict(entry.metrics), entry.digest)
            self.accepted[entry.task_id] = (site, entry.digest)
        self._fold_ready(open_)
        return open_

    def _start(self, journal: RoundJournal) -> OpenRound:
        tasks = [Task(**{**t, "kind": TaskKind(t["kind"])}) for t in journal.plan["tasks"]]
        kind, round_ = TaskKind(journal.plan["kind"]), int(journal.plan["round"])
        now = self.clock()
        self.open = OpenRound(
            round_,
            kind,
            {t.task_id: t for t in tasks},
            now,
            now + self.config.round_timeout_s,
            journal,
        )
        if kind is TaskKind.TRAIN:
            assert self.global_weights is not None
            context = RoundContext(
                round_,
                tuple(self.open.sorted_sites()),
                len(self.registry.sites),
                self.config.seed,
            )
            self.strategy.begin(self.global_weights, context)
        self.cond.notify_all()
        return self.open

    def _splits(self, kind: TaskKind, round_: int) -> tuple[str, ...]:
        if kind is not TaskKind.EVALUATE:
            return ("validation",)
        return ("test",) if round_ == 0 else ("validation", "test")

    def _round_over(self, open_: OpenRound) -> bool:
        if self.stopping:
            raise Stopping
        pending = open_.pending_sites()
        if not pending or self.clock() >= open_.deadline:
            return True
        # do not wait out the deadline for sites that have stopped heartbeating
        return not any(self.registry.is_alive(self.registry.sites[s]) for s in pending)

    def _fold_ready(
        self, open_: OpenRound, *, closing: bool = False, fresh: Update | None = None
    ) -> None:
        """Fold spilled updates into a streaming scheme in sorted site order.

        A site's update waits (on disk) until every site before it has answered, or
        until the round closes, so the sums never depend on arrival order."""
        if open_.kind is not TaskKind.TRAIN or not isinstance(self.strategy, StreamingStrategy):
            return
        order = open_.sorted_sites()
        while open_.folded < len(order):
            entry = open_.journal.entries.get(order[open_.folded])
            if entry is not None:
                # the upload being accepted is still in memory: fold it from there rather
                # than map back the file it was just spilled to
                if fresh is not None and fresh.site_id == entry.site_id:
                    self.strategy.accept(fresh)
                else:
                    self.strategy.accept(entry.load())
            elif not closing:
                return
            open_.folded += 1

    def _aggregate(self, open_: OpenRound) -> StateDict:
        if open_.kind is TaskKind.INIT:
            (entry,) = open_.journal.entries.values()
            weights = entry.tensors()
            self.strategy.initialize(schema_of(weights))
            return weights
        if isinstance(self.strategy, StreamingStrategy):
            self._fold_ready(open_, closing=True)
            return self.strategy.finish()
        assert isinstance(self.strategy, BatchStrategy)
        return self.strategy.aggregate(SpilledUpdateSet(list(open_.journal.entries.values())))

    def _complete(self, open_: OpenRound) -> None:
        summary = _summary(open_, self.clock() - open_.started)
        if open_.kind is not TaskKind.EVALUATE:
            checkpoint = self.store.write_checkpoint(
                open_.round,
                self._aggregate(open_),
                self.strategy.state_dict(),
                self.strategy.download_extras(),
                {
                    "federation_id": self.federation_id,
                    "kind": str(open_.kind),
                    "strategy": self.strategy.name,
                    "summary": summary,
                },
            )
            self._set_global(checkpoint)
            self.completed_round = open_.round
        summary["global_digest"] = self.global_digest
        self.history.append(summary)
        self._save_history()
        open_.journal.discard()  # after the checkpoint and history: a kill before this is harmless
        log.info(
            "round %d: %s complete in %.1fs; %s",
            open_.round,
            open_.kind,
            summary["duration_seconds"],
            ", ".join(
                f"{k}={v:.4f}" for k, v in summary["metrics"].items() if k.startswith("mean/")
            ),
        )


def _check_numbers(header: ResultHeader) -> None:
    """What the site computed, as the header reports it: refused content, not framing."""
    if header.num_examples < 0 or header.local_steps < 0:
        raise invalid("num_examples and local_steps must be >= 0")
    bad = [k for k, v in header.metrics.items() if not math.isfinite(v)]
    if bad:
        raise invalid(f"metric {bad[0]!r} is not finite")


def _summary(open_: OpenRound, duration: float) -> dict[str, Any]:
    metrics: dict[str, float] = {}
    per_name: dict[str, list[float]] = {}
    for site, result in sorted(open_.results.items()):
        for name, value in result.metrics.items():
            metrics[f"{site}/{name}"] = value
            per_name.setdefault(name, []).append(value)
    for name, values in per_name.items():
        metrics[f"mean/{name}"] = sum(values) / len(values)  # unweighted: each site counts once
    summary: dict[str, Any] = {
        "round": open_.round,
        "kind": str(open_.kind),
        "sites": sorted(open_.results),
        "metrics": metrics,
        "duration_seconds": round(duration, 3),
    }
    if open_.refused:
        summary["refused"] = dict(sorted(open_.refused.items()))
    return summary
