"""The contract every registered aggregation scheme keeps, checked scheme by scheme.

Each scheme is driven as the orchestrator drives it: initialize(schema), begin(global,
context), then accept() for each spilled update in sorted site order and finish() for a
streaming scheme, or aggregate() over a SpilledUpdateSet for a batch scheme. The model has
the schema of a tiny MONAI UNet with batch norm (written out below, so these server tests
need no torch; test_client_hooks checks it against build_model): float32 weights and
statistics plus 0-d int64 num_batches_tracked counters, and a UNet is what FedMA needs.
The client half of the contract (every client_config is understood by the client) is in
test_client_hooks.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from pathlib import Path

import numpy as np
import pytest

from fedvox.server import strategies
from fedvox.server.journal import RoundJournal, SpilledUpdateSet
from fedvox.server.strategies import (
    REGISTRY,
    BatchStrategy,
    RoundContext,
    Strategy,
    StreamingStrategy,
)
from fedvox.wire.settings import ConfigError
from fedvox.wire.taskconfig import ModelSpec
from fedvox.wire.tensors import (
    DTYPES,
    StateDict,
    parse_safetensors,
    schema_of,
    to_safetensors,
    write_safetensors,
)
from tests.helpers import assert_state_equal, blake3_hex

NAMES = sorted(REGISTRY)
SITES = ("site-a", "site-b", "site-c")
EXAMPLES = {"site-a": 3, "site-b": 5, "site-c": 8}
STEPS = {"site-a": 2, "site-b": 3, "site-c": 4}
TOTAL_SITES = 4  # one registered site sits the rounds out (|S| < N)


# the state dict of fedvox.client.model.build_model(UNET_SPEC)
UNET_SPEC = ModelSpec(channels=(2, 4), strides=(2,), num_res_units=1, norm="batch")
UNET_SHAPES: dict[str, tuple[int, ...]] = {
    "model.0.conv.unit0.conv.weight": (2, 1, 3, 3, 3),
    "model.0.conv.unit0.conv.bias": (2,),
    "model.0.conv.unit0.adn.N.weight": (2,),
    "model.0.conv.unit0.adn.N.bias": (2,),
    "model.0.conv.unit0.adn.N.running_mean": (2,),
    "model.0.conv.unit0.adn.N.running_var": (2,),
    "model.0.conv.unit0.adn.N.num_batches_tracked": (),
    "model.0.conv.unit0.adn.A.weight": (1,),
    "model.0.residual.weight": (2, 1, 3, 3, 3),
    "model.0.residual.bias": (2,),
    "model.1.submodule.conv.unit0.conv.weight": (4, 2, 3, 3, 3),
    "model.1.submodule.conv.unit0.conv.bias": (4,),
    "model.1.submodule.conv.unit0.adn.N.weight": (4,),
    "model.1.submodule.conv.unit0.adn.N.bias": (4,),
    "model.1.submodule.conv.unit0.adn.N.running_mean": (4,),
    "model.1.submodule.conv.unit0.adn.N.running_var": (4,),
    "model.1.submodule.conv.unit0.adn.N.num_batches_tracked": (),
    "model.1.submodule.conv.unit0.adn.A.weight": (1,),
    "model.1.submodule.residual.weight": (4, 2, 1, 1, 1),
    "model.1.submodule.residual.bias": (4,),
    "model.2.0.conv.weight": (6, 2, 3, 3, 3),
    "model.2.0.conv.bias": (2,),
    "model.2.0.adn.N.weight": (2,),
    "model.2.0.adn.N.bias": (2,),
    "model.2.0.adn.N.running_mean": (2,),
    "model.2.0.adn.N.running_var": (2,),
    "model.2.0.adn.N.num_batches_tracked": (),
    "model.2.0.adn.A.weight": (1,),
    "model.2.1.conv.unit0.conv.weight": (2, 2, 3, 3, 3),
    "model.2.1.conv.unit0.conv.bias": (2,),
}


def _global_model() -> StateDict:
    rng = np.random.default_rng(0)
    out: StateDict = {}
    for name, shape in UNET_SHAPES.items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.array(40, dtype=np.int64)
        else:
            out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


GLOBAL = _global_model()
SCHEMA = schema_of(GLOBAL)
_journals = itertools.count()


def test_the_model_has_float32_tensors_and_an_int64_counter() -> None:
    dtypes = {v.dtype for v in GLOBAL.values()}
    assert dtypes == {np.dtype(np.float32), np.dtype(np.int64)}
    assert any(v.shape == () for v in GLOBAL.values())


def updates_for(strategy: Strategy, round_: int) -> dict[str, StateDict]:
    """Each site's upload: a delta for every global tensor, plus the scheme's extras."""
    extras = strategy.upload_extras(SCHEMA)
    out: dict[str, StateDict] = {}
    for i, site in enumerate(SITES):
        rng = np.random.default_rng(1000 * round_ + i)
        tensors: StateDict = {}
        for name, spec in sorted({**SCHEMA, **extras}.items()):
            dtype = DTYPES[spec.dtype]
            if dtype.kind == "f":
                tensors[name] = (0.01 * rng.standard_normal(spec.shape)).astype(dtype)
            else:
                tensors[name] = np.full(spec.shape, STEPS[site], dtype=dtype)
        out[site] = tensors
    return out


def run_round(strategy: Strategy, weights: StateDict, round_: int, tmp_path: Path) -> StateDict:
    """One round as the orchestrator runs it, from blobs spilled to disk."""
    context = RoundContext(round_, SITES, TOTAL_SITES, seed=7)
    strategy.begin(weights, context)
    journal = RoundJournal.create(tmp_path / f"journal-{next(_journals)}", round_, {})
    for site, tensors in updates_for(strategy, round_).items():
        blob = to_safetensors(tensors)
        journal.spill(
            site, f"task-{site}", blob, blake3_hex(blob), EXAMPLES[site], STEPS[site], {"loss": 1.0}
        )
    if isinstance(strategy, StreamingStrategy):
        for site in sorted(journal.entries):
            strategy.accept(journal.entries[site].load())
        return strategy.finish()
    assert isinstance(strategy, BatchStrategy)
    return strategy.aggregate(SpilledUpdateSet(list(journal.entries.values())))


def fresh(name: str) -> Strategy:
    strategy = strategies.create(name)
    strategy.initialize(SCHEMA)
    return strategy


@pytest.mark.parametrize("name", NAMES)
def test_result_has_the_global_keys_shapes_and_dtypes(name: str, tmp_path: Path) -> None:
    strategy = fresh(name)
    assert isinstance(strategy, StreamingStrategy) != isinstance(strategy, BatchStrategy)
    before = {k: v.copy() for k, v in GLOBAL.items()}
    result = run_round(strategy, GLOBAL, 1, tmp_path)
    assert sorted(result) == sorted(GLOBAL)
    for key, value in GLOBAL.items():
        assert result[key].shape == value.shape, key
        assert result[key].dtype == value.dtype, key
        assert np.all(np.isfinite(result[key])), key
    moved = [
        k for k, v in GLOBAL.items() if v.dtype.kind == "f" and not np.array_equal(result[k], v)
    ]
    assert moved, f"{name} ignored every update"
    assert_state_equal(GLOBAL, before)  # the global model is read-only
    for key, value in strategy.download_extras().items():
        assert "/" in key and key.split("/", 1)[1] in GLOBAL, key  # '<scheme>.<what>/<tensor>'
        assert np.all(np.isfinite(value)), key


@pytest.mark.parametrize("name", NAMES)
def test_same_inputs_give_identical_bytes(name: str, tmp_path: Path) -> None:
    results = []
    for _ in range(2):
        strategy = fresh(name)
        w1 = run_round(strategy, GLOBAL, 1, tmp_path)
        w2 = run_round(strategy, w1, 2, tmp_path)
        results.append((w2, strategy.state_dict(), strategy.download_extras()))
    for got, want in zip(results[0], results[1], strict=True):
        assert_state_equal(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name: str, tmp_path: Path) -> None:
    running = fresh(name)
    w1 = run_round(running, GLOBAL, 1, tmp_path)
    path = tmp_path / "strategy.safetensors"
    write_safetensors(running.state_dict(), path)

    restored = strategies.create(name)  # a restarted server: load the checkpoint, then initialize
    restored.load_state_dict(parse_safetensors(path.read_bytes()))
    restored.initialize(SCHEMA)
    assert_state_equal(restored.state_dict(), running.state_dict())
    assert_state_equal(restored.download_extras(), running.download_extras())
    assert restored.client_config(2) == running.client_config(2)

    w2 = run_round(running, w1, 2, tmp_path)
    w2_restored = run_round(restored, w1, 2, tmp_path)
    assert_state_equal(w2_restored, w2)
    assert_state_equal(restored.state_dict(), running.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_documented_frozen_dataclasses(name: str) -> None:
    cls = REGISTRY[name]
    assert cls.name == name
    assert (cls.__doc__ or "").strip(), f"{name} needs a docstring for `fedvox strategies`"
    assert dataclasses.is_dataclass(cls.Params)
    params = cls.Params()
    for field in dataclasses.fields(cls.Params):
        assert field.default is not dataclasses.MISSING, f"{name}.{field.name} needs a default"
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, field.name, field.default)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_rejected_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"strategy '{name}' has no parameter 'no_such_knob'"):
        strategies.create(name, {"no_such_knob": 1})


def _numeric_parameters() -> list[tuple[str, str]]:
    out = []
    for name in NAMES:
        hints = typing.get_type_hints(REGISTRY[name].Params)
        out += [
            (name, field.name)
            for field in dataclasses.fields(REGISTRY[name].Params)
            if hints[field.name] in (int, float)
        ]
    return out


@pytest.mark.parametrize(("name", "param"), _numeric_parameters())
def test_negative_parameter_is_rejected_with_a_clear_error(name: str, param: str) -> None:
    with pytest.raises(ConfigError, match=param):
        strategies.create(name, {param: -1})


def test_bad_values_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"fedprox: mu must be >= 0, got -0.1"):
        strategies.create("fedprox", {"mu": -0.1})
    with pytest.raises(ConfigError, match=r"setting 'fedprox.mu': 'lots' is not a number"):
        strategies.create("fedprox", {"mu": "lots"})
    with pytest.raises(ConfigError, match=r"unknown strategy 'fedsgd'"):
        strategies.create("fedsgd")
