"""The site's task loop: register, then poll -> download -> train/evaluate -> upload."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

import grpc
import numpy as np

from fedvox.client.checks import INFO_ERROR
from fedvox.client.connection import Connection
from fedvox.client.trainer import TaskAborted, Trainer
from fedvox.client.volume import DataError
from fedvox.client.weights import delta
from fedvox.v1 import federation_pb2 as pb
from fedvox.wire.digest import digest_hex
from fedvox.wire.taskconfig import TaskConfig
from fedvox.wire.tensors import StateDict, parse_safetensors, to_safetensors

log = logging.getLogger(__name__)


def poison(update: StateDict, mode: str) -> StateDict:
    """A Byzantine site's corruption of its delta, for robustness tests only ("" = none).

    Floating tensors only: "scale100" multiplies by 100, "signflip" negates, "nan" fills
    with NaN; integer counters are left as they are."""
    if not mode:
        return update
    factor = {"scale100": 100.0, "signflip": -1.0, "nan": float("nan")}[mode]
    log.warning("byzantine mode %r: corrupting the uploaded delta (robustness testing)", mode)
    return {
        k: np.multiply(v, factor, dtype=v.dtype) if v.dtype.kind == "f" else v
        for k, v in update.items()
    }


def _is_extra(name: str) -> bool:
    # scheme tensors published with the model are named "<scheme>.<bundle>/<key>";
    # torch state-dict keys never contain "/"
    return "/" in name


@dataclass
class Heartbeat:
    """Tells the server we are alive while a task runs, and notices when it says abort."""

    connection: Connection
    interval_s: float
    task_id: str = ""
    progress: float = 0.0
    abort: bool = False

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.connection.heartbeat(self.task_id, self.progress) and self.task_id:
                    self.abort = True
            except grpc.RpcError as exc:
                log.debug("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()


class Runner:
    def __init__(
        self,
        connection: Connection,
        trainer: Trainer,
        poll_timeout_s: float = 30.0,
        info: dict[str, str] | None = None,
        byzantine: str = "",
    ) -> None:
        self.connection = connection
        self.trainer = trainer
        self.poll_timeout_s = poll_timeout_s
        self.info = info or {}
        self.byzantine = byzantine  # robustness testing only; see ClientConfig.byzantine

    def _register(self) -> pb.RegisterResponse:
        info = {**self.info, **self.trainer.site_info()}
        reply = self.connection.register(self.trainer.num_examples, info)
        log.info(
            "site %s: registered with federation %s (%d training cases)",
            self.connection.site_id,
            reply.federation_id,
            self.trainer.num_examples,
        )
        return reply

    def _next_task(self) -> pb.Task:
        try:
            return self.connection.get_task(self.poll_timeout_s).task
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            # a restarted server has forgotten us (registrations are not checkpointed)
            self._register()
            return pb.Task(type=pb.TASK_TYPE_WAIT)

    def run(self) -> int:
        """Work until the server says STOP; returns the number of tasks completed."""
        reply = self._register()
        problem = self.trainer.site_info().get(INFO_ERROR)
        if problem:  # registered all the same, so the server shows why and leaves this site out
            raise DataError(f"site {self.connection.site_id} cannot take part: {problem}")
        heartbeat = Heartbeat(self.connection, max(reply.heartbeat_interval_seconds, 0.5))
        self.trainer.abort_requested = lambda: heartbeat.abort
        done = 0
        try:
            while True:
                task = self._next_task()
                if task.type == pb.TASK_TYPE_STOP:
                    log.info("site %s: federation finished, stopping", self.connection.site_id)
                    return done
                if task.type in (pb.TASK_TYPE_WAIT, pb.TASK_TYPE_UNSPECIFIED):
                    continue
                heartbeat.task_id, heartbeat.progress, heartbeat.abort = task.task_id, 0.0, False
                try:
                    self._run_task(task, heartbeat)
                    done += 1
                except TaskAborted as exc:
                    log.warning("site %s: %s", self.connection.site_id, exc)
                except grpc.RpcError as exc:
                    # the server refused the result (its round closed, or its content was
                    # refused and the round goes on without us): drop it and poll again, which
                    # waits until the next round gives this site a task
                    log.warning(
                        "site %s: round %d: task %s refused (%s: %s); waiting for the next task",
                        self.connection.site_id,
                        task.round,
                        task.task_id[:8],
                        exc.code().name,
                        exc.details(),
                    )
                finally:
                    heartbeat.task_id = ""
        finally:
            heartbeat.stop()

    def _run_task(self, task: pb.Task, heartbeat: Heartbeat) -> None:
        config = TaskConfig.from_json(task.config_json)
        site = self.connection.site_id
        header = pb.SubmitHeader(site_id=site, task_id=task.task_id, round=task.round)
        blob = b""
        if task.type == pb.TASK_TYPE_INIT:
            log.info("site %s: building the initial model", site)
            blob = to_safetensors(self.trainer.initial_weights(config))
            header.kind = pb.PAYLOAD_KIND_FULL
        else:
            log.info(
                "round %d: site %s downloading global model %s (%.1f MB)",
                task.round,
                site,
                task.global_digest[:12],
                task.global_size / 1e6,
            )
            published = parse_safetensors(
                self.connection.download(task.global_digest, task.global_size)
            )
            # scheme tensors (e.g. SCAFFOLD's c) travel with the model under a prefix
            weights = {k: v for k, v in published.items() if not _is_extra(k)}
            extras = {k: v for k, v in published.items() if _is_extra(k)}
            if task.type == pb.TASK_TYPE_TRAIN:
                metrics = self.trainer.evaluate(weights, config, "validation", task.round - 1)
                metrics = {f"global_{k}": v for k, v in metrics.items()}
                result = self.trainer.train(
                    weights, config, task.round, lambda p: setattr(heartbeat, "progress", p), extras
                )
                metrics.update(result.metrics)
                metrics.update(
                    self.trainer.evaluate(result.weights, config, "validation", task.round)
                )
                update = poison(delta(result.weights, weights), self.byzantine)
                blob = to_safetensors({**update, **result.extras})
                header.kind, header.local_steps = pb.PAYLOAD_KIND_DELTA, result.local_steps
                header.num_examples = result.num_examples
            else:
                metrics = {}
                for split in config.splits:
                    metrics.update(self.trainer.evaluate(weights, config, split, task.round))
                header.kind = pb.PAYLOAD_KIND_NONE
            header.metrics.update(metrics)
            log.info(
                "round %d: site %s %s",
                task.round,
                site,
                json.dumps({k: round(v, 4) for k, v in metrics.items()}),
            )
        if blob:
            header.digest, header.size = digest_hex(blob), len(blob)
        reply = self.connection.submit(header, blob)
        log.info(
            "round %d: site %s result %s%s",
            task.round,
            site,
            "accepted" if reply.accepted else "refused",
            " (duplicate)" if reply.duplicate else "",
        )
