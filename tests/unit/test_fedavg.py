"""Tests of FedAvg aggregation and the strategy registry (fedvox.server.strategies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedvox.server import strategies
from fedvox.server.strategies import RoundContext, Update, base
from fedvox.server.strategies.base import _axpy, zero_sums
from fedvox.server.strategies.fedavg import FedAvg
from fedvox.wire.tensors import StateDict, parse_safetensors, schema_of, write_safetensors
from tests.helpers import f32

CONTEXT = RoundContext(round=1, sampled=("a", "b", "c"), total_sites=3)


def global_weights() -> StateDict:
    return {
        "w": f32([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        "b": f32([0.0, 0.0, 0.0]),
        "n": np.array([10, 0], dtype=np.int64),  # a counter such as num_batches_tracked
    }


# (site, examples, deltas)
UPDATES: list[tuple[str, int, StateDict]] = [
    (
        "a",
        1,
        {
            "w": f32([[0.6, 0.0, -1.2], [0.0, 0.5, 6.0]]),
            "b": f32([6.0, 0.0, 0.0]),
            "n": np.array([1, 5], dtype=np.int64),
        },
    ),
    (
        "b",
        2,
        {
            "w": f32([[0.3, 1.5, 0.0], [-3.0, 0.5, 0.0]]),
            "b": f32([0.0, 3.0, 0.0]),
            "n": np.array([2, 0], dtype=np.int64),
        },
    ),
    (
        "c",
        3,
        {
            "w": f32([[0.0, 0.5, 0.4], [1.0, -1.0, 0.0]]),
            "b": f32([0.0, 0.0, 2.0]),
            "n": np.array([4, 1], dtype=np.int64),
        },
    ),
]
# sum_i n_i * delta_i / 6, worked out by hand:
#   w: [[1.2, 4.5, 0], [-3, -1.5, 6]] / 6 = [[0.2, 0.75, 0], [-0.5, -0.25, 1]]
#   b: [6, 6, 6] / 6 = [1, 1, 1]
#   n: [17, 8] / 6 = [2.83, 1.33] -> rounded [3, 1]
EXPECTED_W = [[1.2, 2.75, 3.0], [3.5, 4.75, 7.0]]
EXPECTED_B = [1.0, 1.0, 1.0]
EXPECTED_N = [13, 1]


def fold(strategy: FedAvg, extra: list[Update] | None = None) -> StateDict:
    strategy.begin(global_weights(), CONTEXT)
    for site, examples, deltas in UPDATES:
        strategy.accept(Update(site, examples, deltas))
    for update in extra or []:
        strategy.accept(update)
    return strategy.finish()


def assert_expected(result: StateDict) -> None:
    assert sorted(result) == ["b", "n", "w"]
    assert result["w"].dtype == np.float32 and result["b"].dtype == np.float32
    np.testing.assert_allclose(result["w"].astype(np.float64), EXPECTED_W, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["b"].astype(np.float64), EXPECTED_B, rtol=1e-6)
    assert result["n"].dtype == np.int64
    np.testing.assert_array_equal(result["n"], EXPECTED_N)


def test_weighted_mean_of_three_sites() -> None:
    assert_expected(fold(FedAvg()))


def test_order_of_arrival_does_not_matter() -> None:
    strategy = FedAvg()
    strategy.begin(global_weights(), CONTEXT)
    for site, examples, deltas in reversed(UPDATES):
        strategy.accept(Update(site, examples, deltas))
    assert_expected(strategy.finish())


def test_update_with_no_examples_is_ignored() -> None:
    huge: StateDict = {
        "w": np.full((2, 3), 1e6, dtype=np.float32),
        "b": np.full(3, 1e6, dtype=np.float32),
        "n": np.array([1000, 1000], dtype=np.int64),
    }
    assert_expected(fold(FedAvg(), [Update("z", 0, huge), Update("neg", -5, huge)]))


def test_no_weighted_update_keeps_the_global_model() -> None:
    strategy = FedAvg()
    strategy.begin(global_weights(), CONTEXT)
    strategy.accept(Update("z", 0, UPDATES[0][2]))
    result = strategy.finish()
    for name, array in global_weights().items():
        np.testing.assert_array_equal(result[name], array)


def test_equal_weights_give_the_plain_mean() -> None:
    strategy = FedAvg()
    strategy.begin({"x": f32([0.0, 10.0])}, CONTEXT)
    strategy.accept(Update("a", 5, {"x": f32([1.0, -2.0])}))
    strategy.accept(Update("b", 5, {"x": f32([3.0, 4.0])}))
    np.testing.assert_array_equal(strategy.finish()["x"], [2.0, 11.0])


def test_each_round_starts_from_scratch() -> None:
    strategy = FedAvg()
    fold(strategy)
    strategy.begin({"x": f32([1.0])}, CONTEXT)
    strategy.accept(Update("a", 2, {"x": f32([0.5])}))
    assert strategy.finish()["x"].tolist() == [1.5]


def test_inputs_are_not_modified() -> None:
    strategy = FedAvg()
    base = global_weights()
    strategy.begin(base, CONTEXT)
    for site, examples, deltas in UPDATES:
        strategy.accept(Update(site, examples, deltas))
    strategy.finish()
    np.testing.assert_array_equal(base["w"], global_weights()["w"])
    np.testing.assert_array_equal(UPDATES[0][2]["w"], f32([[0.6, 0.0, -1.2], [0.0, 0.5, 6.0]]))


def test_state_dict_round_trip(tmp_path: Path) -> None:
    strategy = FedAvg()
    fold(strategy)
    state = strategy.state_dict()
    assert state == {}  # FedAvg keeps nothing between rounds
    path = tmp_path / "strategy.safetensors"
    write_safetensors(state, path)
    restored = FedAvg()
    restored.load_state_dict(parse_safetensors(path.read_bytes()))
    assert_expected(fold(restored))


def test_load_state_dict_refuses_foreign_state() -> None:
    with pytest.raises(ValueError, match=r"fedavg keeps no server state, got \['momentum'\]"):
        FedAvg().load_state_dict({"momentum": f32([1.0])})


def test_registry_creates_fedavg() -> None:
    strategy = strategies.create("fedavg")
    assert isinstance(strategy, FedAvg)
    assert strategy.name == "fedavg"
    assert strategies.create("fedavg") is not strategy


def test_unknown_strategy_lists_known_names() -> None:
    with pytest.raises(
        ValueError, match=r"unknown strategy 'nope'; known: fedadagrad, fedadam"
    ) as info:
        strategies.create("nope")
    for name in strategies.REGISTRY:
        assert name in str(info.value)


def test_large_tensors_fold_by_axpy_alike_from_writable_or_read_only_views() -> None:
    """Tensors of 32,768 elements or more are folded by BLAS axpy: the weighted mean of a
    float64 reference to float32 rounding, bit for bit the same whether the upload's
    tensors are writable or read-only (the memory map of its journal file)."""
    rng = np.random.default_rng(0)
    size = 100_003  # odd: the kernel's vector body and its scalar tail both count
    base = rng.standard_normal(size).astype(np.float32)
    deltas = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
    examples = [1, 2, 3]
    expected = base.astype(np.float64) + sum(
        n * d.astype(np.float64) for n, d in zip(examples, deltas, strict=True)
    ) / sum(examples)

    def run(writable: bool) -> np.ndarray:
        strategy = FedAvg()
        strategy.begin({"x": base.copy()}, CONTEXT)
        for site, n, delta in zip("abc", examples, deltas, strict=True):
            tensor = delta.copy()
            tensor.flags.writeable = writable
            strategy.accept(Update(site, n, {"x": tensor}))
            assert tensor.tobytes() == delta.tobytes()  # the upload is never changed
        return strategy.finish()["x"]

    fresh, mapped = run(writable=True), run(writable=False)
    assert fresh.tobytes() == mapped.tobytes()
    np.testing.assert_allclose(fresh, expected, rtol=0, atol=2e-6)


def test_axpy_adds_the_scaled_update_in_place() -> None:
    acc = np.arange(40_000, dtype=np.float32)
    value = np.full(40_000, 2.0, dtype=np.float32)
    assert _axpy(acc, value, 0.25)  # large, float32, contiguous: BLAS takes it
    np.testing.assert_array_equal(acc, np.arange(40_000, dtype=np.float32) + 0.5)
    small = np.zeros(3, dtype=np.float32)
    assert not _axpy(small, np.ones(3, dtype=np.float32), 1.0)  # numpy's job
    assert small.tolist() == [0.0, 0.0, 0.0]


def test_sums_start_as_written_zeros_and_fold_exactly_as_a_first_scaling() -> None:
    """FedAvg allocates its sums when the round begins (the upload's map cannot become them);
    a first fold into those zeros equals scaling the update, bit for bit (no zero products
    here: 0.0 + -0.0 would come out +0.0)."""
    rng = np.random.default_rng(1)
    update: StateDict = {
        "big": rng.standard_normal(50_000).astype(np.float32),  # BLAS axpy
        "small": rng.standard_normal(7).astype(np.float32),  # numpy
        "n": np.array([3, 5], dtype=np.int64),  # a counter: summed in float64
    }
    sums = zero_sums(schema_of(update))
    assert {k: (v.dtype, v.shape) for k, v in sums.items()} == {
        "big": (np.dtype(np.float32), (50_000,)),
        "small": (np.dtype(np.float32), (7,)),
        "n": (np.dtype(np.float64), (2,)),
    }
    assert not any(v.any() for v in sums.values())
    scaled: dict[str, np.ndarray] = {}
    base.fold(scaled, update, 0.3712345)  # no sums yet: each tensor is scaled into a new one
    base.fold(sums, update, 0.3712345)
    for name, value in scaled.items():
        assert sums[name].tobytes() == value.tobytes(), name
    strategy = FedAvg()
    strategy.begin(global_weights(), CONTEXT)
    assert sorted(strategy._sums) == ["b", "n", "w"] and not strategy._sums["w"].any()
