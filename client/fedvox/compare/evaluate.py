"""Scoring a finished arm: its final model on any site's test cases, case by case.

The harness evaluates here, in its own process and on the CPU with a fixed thread count, so every
arm (a federation, a local-only site, the pooled site) is scored by the same code on the same
cases. It follows the client's own evaluation (`MonaiTrainer.evaluate`): the server's
preprocessing settings, a sliding window of the training patch size, argmax, and the lesion Dice
per case, undefined (None) for a case without a lesion.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from fedvox.wire.taskconfig import TaskConfig
from fedvox.wire.tensors import StateDict, parse_safetensors


def task_config(
    config: Path | None, overrides: dict[str, str], strategy: str, params: dict[str, str]
) -> TaskConfig:
    """The model spec, training settings and client hooks the server sends with its tasks."""
    from fedvox.server.config import load_server_config
    from fedvox.server.strategies import create

    server = load_server_config(config, {**overrides, "strategy": strategy})
    hooks = create(strategy, params).client_config(0)
    return TaskConfig(model=server.model, train=server.train, strategy=hooks)


def load_weights(path: Path) -> StateDict:
    return parse_safetensors(bytearray(path.read_bytes()))


class Evaluator:
    """Per-case lesion Dice of models on cases; preprocessed volumes are cached across calls."""

    def __init__(self, threads: int) -> None:
        import warnings

        import torch

        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")

        torch.set_num_threads(max(1, threads))
        self._sets: dict[tuple[tuple[str, ...], Any], Any] = {}

    def case_dice(
        self,
        config: TaskConfig,
        weights: StateDict,
        personal: StateDict | None,
        cases: list[dict[str, str]],
    ) -> list[float | None]:
        """The model `weights` (plus a site's `personal` layers, for FedBN/FedPer) on `cases`."""
        import torch
        from monai.inferers import sliding_window_inference
        from monai.metrics import DiceMetric

        if not cases:
            return []
        model = self._model(config, weights, personal or {})
        dataset = self._dataset(config, cases)
        roi = [config.train.patch_size] * 3
        scores: list[float | None] = []
        with torch.inference_mode():
            for i in range(len(cases)):
                item = dataset[i]
                logits = sliding_window_inference(item["image"][None], roi, 2, model, overlap=0.25)
                assert isinstance(logits, torch.Tensor)
                pred = torch.nn.functional.one_hot(logits.argmax(1), 2).permute(0, 4, 1, 2, 3)
                truth = torch.nn.functional.one_hot(item["label"][None, 0].long(), 2).permute(
                    0, 4, 1, 2, 3
                )
                metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
                value = float(metric(y_pred=pred, y=truth).flatten()[0])
                scores.append(None if math.isnan(value) else value)
        return scores

    def _model(self, config: TaskConfig, weights: StateDict, personal: StateDict) -> Any:
        import torch

        from fedvox.client.hooks import SchemeHooks, personal_keys
        from fedvox.client.model import build_model
        from fedvox.client.weights import to_torch

        torch.manual_seed(config.train.seed)  # personal layers a site never trained: as at init
        model = build_model(config.model)
        keep = personal_keys(model, SchemeHooks.from_config(config.strategy))
        expected = set(model.state_dict())
        given = set(weights) | set(personal)
        if not set(weights) <= expected or not set(personal) <= keep or expected - given - keep:
            raise ValueError(
                f"the model does not fit the spec: missing {sorted(expected - given)[:3]}, "
                f"unexpected {sorted(given - expected)[:3]}"
            )
        model.load_state_dict(to_torch({**weights, **personal}), strict=False)
        return model.eval()

    def _dataset(self, config: TaskConfig, cases: list[dict[str, str]]) -> Any:
        from fedvox.client.data import evaluation_dataset

        # only the preprocessing settings matter, not e.g. the number of local steps
        settings = dataclasses.replace(config.train, local_steps=0, lr=0.0, seed=0)
        key = (tuple(c["image"] for c in cases), settings)
        if key not in self._sets:
            self._sets[key] = evaluation_dataset(cases, settings, cache_rate=1.0)
        return self._sets[key]
