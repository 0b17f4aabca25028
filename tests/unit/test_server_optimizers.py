"""Hand-computed server steps of FedAvgM, FedAdam, FedYogi, FedAdagrad, FedNova and SCAFFOLD."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from fedvox.server import strategies
from fedvox.server.strategies import RoundContext, StreamingStrategy, Update
from fedvox.server.strategies.fedavg import FedAvg
from fedvox.server.strategies.fednova import FedNova
from fedvox.server.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedvox.server.strategies.scaffold import Scaffold
from fedvox.wire.tensors import StateDict, parse_safetensors, schema_of, write_safetensors
from tests.helpers import assert_state_equal, f32

# (site, examples, local steps, tensors)
Site = tuple[str, int, int, StateDict]


def one_round(
    strategy: StreamingStrategy,
    weights: StateDict,
    sites: Sequence[Site],
    round_: int = 1,
    total_sites: int | None = None,
) -> StateDict:
    """One round as the orchestrator runs it: begin, accept in sorted site order, finish."""
    names = tuple(sorted(s[0] for s in sites))
    strategy.begin(weights, RoundContext(round_, names, total_sites or len(names)))
    for site, examples, steps, tensors in sorted(sites, key=lambda s: s[0]):
        strategy.accept(Update(site, examples, tensors, steps))
    return strategy.finish()


def close(got: np.ndarray, want: list[float]) -> None:
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-5, atol=1e-7)


# ---- FedAdam: Reddi et al. 2021, Algorithm 2 ----
# m = b1 m + (1 - b1) D;  v = b2 v + (1 - b2) D^2 (v starts at tau^2);  w += lr m / (sqrt v + tau)

W3: StateDict = {"w": f32([1.0, 2.0, 3.0])}
# example-weighted mean delta D = (1 * a + 3 * b) / 4 = [0.1, -0.7, 0.0]
ROUND1: list[Site] = [
    ("a", 1, 1, {"w": f32([0.4, -1.0, 0.3])}),
    ("b", 3, 1, {"w": f32([0.0, -0.6, -0.1])}),
]
# D = [0.1, 0.1, 0.1]
ROUND2: list[Site] = [("a", 2, 1, {"w": f32([0.1, 0.1, 0.1])})]
ADAPTIVE: dict[str, object] = {"lr": 0.1, "beta1": 0.5, "beta2": 0.5, "tau": 0.1}


def test_fedadam_one_step_against_the_formula() -> None:
    strategy = strategies.create("fedadam", ADAPTIVE)
    assert isinstance(strategy, FedAdam)
    result = one_round(strategy, W3, ROUND1)
    # m = 0.5 * D = [0.05, -0.35, 0]
    # v = 0.5 * 0.1^2 + 0.5 * D^2 = [0.005 + 0.005, 0.005 + 0.245, 0.005] = [0.01, 0.25, 0.005]
    # step = 0.1 * m / (sqrt(v) + 0.1) = [0.005 / 0.2, -0.035 / 0.6, 0] = [0.025, -0.0583333, 0]
    close(result["w"], [1.025, 1.9416667, 3.0])
    assert result["w"].dtype == np.float32
    state = strategy.state_dict()
    assert sorted(state) == ["m/w", "v/w"]
    close(state["m/w"], [0.05, -0.35, 0.0])
    close(state["v/w"], [0.01, 0.25, 0.005])
    # second round, D = [0.1, 0.1, 0.1]:
    # m = 0.5 m + 0.5 D = [0.075, -0.125, 0.05];  v = 0.5 v + 0.5 D^2 = [0.01, 0.13, 0.0075]
    # step = 0.1 m / (sqrt v + 0.1) = [0.0375, -0.0271412, 0.0267949]
    result2 = one_round(strategy, result, ROUND2, round_=2)
    close(strategy.state_dict()["m/w"], [0.075, -0.125, 0.05])
    close(strategy.state_dict()["v/w"], [0.01, 0.13, 0.0075])
    close(result2["w"], [1.0625, 1.9145255, 3.0267949])


def test_fedadam_defaults_against_the_formula() -> None:
    strategy = FedAdam()  # lr 0.1, beta1 0.9, beta2 0.99, tau 1e-3
    result = one_round(strategy, W3, ROUND1)
    # m = 0.1 D = [0.01, -0.07, 0];  v = 0.99e-6 + 0.01 D^2 = [1.0099e-4, 4.90099e-3, 9.9e-7]
    # step = 0.1 m / (sqrt v + 1e-3) = [0.0905027, -0.0985817, 0]
    close(strategy.state_dict()["v/w"], [1.0099e-4, 4.90099e-3, 9.9e-7])
    close(result["w"], [1.0905027, 1.9014183, 3.0])


# FedYogi and FedAdagrad: D1 = [0.2, -0.7, 0], then D2 = [0.3, 0, 0.05]
# (D1[0]^2 = 0.04 is clear of v = 0.01, so Yogi's sign is never a float rounding tie)
YOGI1: list[Site] = [
    ("a", 1, 1, {"w": f32([0.8, -1.0, 0.3])}),
    ("b", 3, 1, {"w": f32([0.0, -0.6, -0.1])}),
]
YOGI2: list[Site] = [("a", 1, 1, {"w": f32([0.3, 0.0, 0.05])})]


def test_fedyogi_second_moment() -> None:
    strategy = strategies.create("fedyogi", ADAPTIVE)
    assert isinstance(strategy, FedYogi)
    result = one_round(strategy, W3, YOGI1)
    # v = v - (1 - b2) D^2 sign(v - D^2), v0 = 0.01, D^2 = [0.04, 0.49, 0]:
    # sign = [-1, -1, +1] -> v = [0.01 + 0.02, 0.01 + 0.245, 0.01 - 0] = [0.03, 0.255, 0.01]
    close(strategy.state_dict()["v/w"], [0.03, 0.255, 0.01])
    # m = [0.1, -0.35, 0];  step = 0.1 m / (sqrt v + 0.1) = [0.0366025, -0.0578536, 0]
    close(result["w"], [1.0366025, 1.9421464, 3.0])
    one_round(strategy, result, YOGI2, round_=2)
    # D^2 = [0.09, 0, 0.0025]; sign(v - D^2) = [-1, +1, +1]:
    # v = [0.03 + 0.045, 0.255 - 0, 0.01 - 0.00125] = [0.075, 0.255, 0.00875]
    # (Adam would give 0.5 v + 0.5 D^2 = [0.06, 0.1275, 0.00625]: Yogi moves v additively)
    close(strategy.state_dict()["v/w"], [0.075, 0.255, 0.00875])
    close(strategy.state_dict()["m/w"], [0.2, -0.175, 0.025])


def test_fedadagrad_second_moment() -> None:
    strategy = strategies.create("fedadagrad", ADAPTIVE)
    assert isinstance(strategy, FedAdagrad)
    result = one_round(strategy, W3, YOGI1)
    # v = v + D^2 = [0.01 + 0.04, 0.01 + 0.49, 0.01] = [0.05, 0.5, 0.01] (beta2 unused)
    close(strategy.state_dict()["v/w"], [0.05, 0.5, 0.01])
    # step = 0.1 m / (sqrt v + 0.1) = [0.01 / 0.3236068, -0.035 / 0.8071068, 0]
    close(result["w"], [1.0309017, 1.9566352, 3.0])
    one_round(strategy, result, YOGI2, round_=2)
    # v = [0.05 + 0.09, 0.5 + 0, 0.01 + 0.0025]: it only grows
    close(strategy.state_dict()["v/w"], [0.14, 0.5, 0.0125])


# ---- FedAvgM: v = beta v + D;  w += lr v; integer counters take the plain mean ----


def test_fedavgm_two_rounds() -> None:
    strategy = strategies.create("fedavgm", {"momentum": 0.5, "lr": 2.0})
    assert isinstance(strategy, FedAvgM)
    weights: StateDict = {"w": f32([1.0, 1.0]), "n": np.array([0], dtype=np.int64)}
    round1: list[Site] = [
        ("a", 1, 1, {"w": f32([1.0, -4.0]), "n": np.array([2], dtype=np.int64)}),
        ("b", 1, 1, {"w": f32([1.0, 0.0]), "n": np.array([4], dtype=np.int64)}),
    ]
    # D = [1, -2]; v = [1, -2]; w = [1 + 2, 1 - 4] = [3, -3]; n = 0 + 3
    w1 = one_round(strategy, weights, round1)
    np.testing.assert_array_equal(w1["w"], [3.0, -3.0])
    np.testing.assert_array_equal(w1["n"], [3])
    assert sorted(strategy.state_dict()) == ["v/w"]
    round2: list[Site] = [
        ("a", 1, 1, {"w": f32([0.5, 1.0]), "n": np.array([1], dtype=np.int64)}),
        ("b", 1, 1, {"w": f32([0.5, 1.0]), "n": np.array([1], dtype=np.int64)}),
    ]
    # D = [0.5, 1]; v = 0.5 [1, -2] + [0.5, 1] = [1, 0]; w = [3 + 2, -3 + 0] = [5, -3]
    # n = 3 + 1 (momentum would have given 3 + 2 * (0.5 * 3 + 1) = 8)
    w2 = one_round(strategy, w1, round2, round_=2)
    np.testing.assert_array_equal(strategy.state_dict()["v/w"], [1.0, 0.0])
    np.testing.assert_array_equal(w2["w"], [5.0, -3.0])
    np.testing.assert_array_equal(w2["n"], [4])
    assert w2["n"].dtype == np.int64 and w2["w"].dtype == np.float32


# ---- FedNova: w += tau_eff sum_i p_i delta_i / tau_i, tau_eff = sum_i p_i tau_i ----

NOVA_W: StateDict = {"w": f32([0.0, 0.0]), "n": np.array(0, dtype=np.int64)}
NOVA: list[Site] = [
    ("a", 1, 1, {"w": f32([1.0, 2.0]), "n": np.array(1, dtype=np.int64)}),
    ("b", 3, 4, {"w": f32([8.0, -8.0]), "n": np.array(4, dtype=np.int64)}),
]


def test_fednova_with_unequal_step_counts() -> None:
    strategy = strategies.create("fednova")
    assert isinstance(strategy, FedNova)
    result = one_round(strategy, NOVA_W, NOVA)
    # p = [1/4, 3/4]; d_a = [1, 2] / 1, d_b = [8, -8] / 4 = [2, -2]
    # sum p d = [0.25 + 1.5, 0.5 - 1.5] = [1.75, -1];  tau_eff = 0.25 * 1 + 0.75 * 4 = 3.25
    # step = 3.25 * [1.75, -1] = [5.6875, -3.25];  n: 3.25 * (0.25 + 0.75) = 3.25 -> 3
    np.testing.assert_array_equal(result["w"], [5.6875, -3.25])
    assert int(result["n"]) == 3
    # FedAvg lets the site that ran 4x the steps pull harder: [0.25 + 6, 0.5 - 6]
    fedavg = one_round(FedAvg(), NOVA_W, NOVA)
    np.testing.assert_array_equal(fedavg["w"], [6.25, -5.5])


def test_fednova_ignores_sites_without_steps_and_equals_fedavg_for_equal_steps() -> None:
    zero_steps: Site = ("c", 5, 0, {"w": f32([1e6, 1e6]), "n": np.array(9, dtype=np.int64)})
    result = one_round(FedNova(), NOVA_W, [*NOVA, zero_steps])
    np.testing.assert_array_equal(result["w"], [5.6875, -3.25])
    equal = [(s, n, 2, t) for s, n, _, t in NOVA]
    np.testing.assert_array_equal(
        one_round(FedNova(), NOVA_W, equal)["w"], one_round(FedAvg(), NOVA_W, equal)["w"]
    )


# ---- SCAFFOLD: w += lr_g mean(delta);  c += (|S| / N) mean(dc) ----

SC_W: StateDict = {"w": f32([1.0, 1.0]), "n": np.array(0, dtype=np.int64)}
SC1: list[Site] = [
    ("a", 5, 1, {"w": f32([1.0, 2.0]), "scaffold.dc/w": f32([0.4, -0.8]), "n": np.array(2)}),
    ("b", 50, 1, {"w": f32([3.0, -2.0]), "scaffold.dc/w": f32([0.8, 0.0]), "n": np.array(4)}),
]
SC2: list[Site] = [
    ("a", 5, 1, {"w": f32([0.0, 3.0]), "scaffold.dc/w": f32([0.4, 0.0]), "n": np.array(1)}),
    ("b", 5, 1, {"w": f32([3.0, 0.0]), "scaffold.dc/w": f32([0.0, 0.4]), "n": np.array(1)}),
    ("c", 5, 1, {"w": f32([0.0, 0.0]), "scaffold.dc/w": f32([0.4, 0.8]), "n": np.array(1)}),
]


def scaffold(lr: float = 1.0) -> Scaffold:
    strategy = strategies.create("scaffold", {"lr": lr})
    assert isinstance(strategy, Scaffold)
    strategy.initialize(schema_of(SC_W))
    return strategy


def test_scaffold_extras_cover_the_float_tensors() -> None:
    strategy = scaffold()
    assert sorted(strategy.upload_extras(schema_of(SC_W))) == ["scaffold.dc/w"]
    extras = strategy.download_extras()
    assert sorted(extras) == ["scaffold.c/w"]
    np.testing.assert_array_equal(extras["scaffold.c/w"], [0.0, 0.0])
    assert strategy.client_config(1) == {"scaffold": True, "lr": 0.1}  # SGD's default lr


def test_scaffold_client_lr_goes_to_the_sites_and_is_checked() -> None:
    strategy = strategies.create("scaffold", {"client_lr": "0.05"})
    assert strategy.client_config(1) == {"scaffold": True, "lr": 0.05}
    with pytest.raises(ValueError, match="client_lr must be > 0"):
        strategies.create("scaffold", {"client_lr": "0"})


def test_scaffold_updates_w_and_c_over_two_rounds_with_partial_participation() -> None:
    strategy = scaffold()
    # round 1: 2 of N = 4 sites; unweighted means (example counts do not matter)
    # mean delta = [2, 0] -> w = [3, 1];  n: mean 3 -> 3
    # c = 0 + (2/4) * mean([0.4, -0.8], [0.8, 0]) = 0.5 * [0.6, -0.4] = [0.3, -0.2]
    w1 = one_round(strategy, SC_W, SC1, total_sites=4)
    assert sorted(w1) == ["n", "w"]
    np.testing.assert_array_equal(w1["w"], [3.0, 1.0])
    assert int(w1["n"]) == 3
    close(strategy.download_extras()["scaffold.c/w"], [0.3, -0.2])
    # round 2: 3 of 4 sites; mean delta = [1, 1] -> w = [4, 2];  n: 3 + 1
    # c = [0.3, -0.2] + (3/4) * [0.8/3, 1.2/3] = [0.3 + 0.2, -0.2 + 0.3] = [0.5, 0.1]
    w2 = one_round(strategy, w1, SC2, round_=2, total_sites=4)
    np.testing.assert_array_equal(w2["w"], [4.0, 2.0])
    assert int(w2["n"]) == 4
    close(strategy.download_extras()["scaffold.c/w"], [0.5, 0.1])
    close(strategy.state_dict()["scaffold.c/w"], [0.5, 0.1])
    assert strategy.state_dict()["scaffold.c/w"].dtype == np.float32


def test_scaffold_server_learning_rate_scales_w_not_c() -> None:
    strategy = scaffold(lr=0.5)
    w1 = one_round(strategy, SC_W, SC1, total_sites=4)
    w2 = one_round(strategy, w1, SC2, round_=2, total_sites=4)
    # w = 1 + 0.5 * [2, 0] = [2, 1], then + 0.5 * [1, 1] = [2.5, 1.5]
    np.testing.assert_array_equal(w1["w"], [2.0, 1.0])
    np.testing.assert_array_equal(w2["w"], [2.5, 1.5])
    close(strategy.download_extras()["scaffold.c/w"], [0.5, 0.1])


# ---- checkpoint round trips: save after round 1, restore, continue identically ----


def _adaptive_rounds() -> tuple[StateDict, list[Site], list[Site]]:
    return W3, YOGI1, YOGI2


def _momentum_rounds() -> tuple[StateDict, list[Site], list[Site]]:
    return W3, ROUND1, ROUND2


def _scaffold_rounds() -> tuple[StateDict, list[Site], list[Site]]:
    return SC_W, SC1, SC2


MOMENTUM: dict[str, object] = {"momentum": 0.5, "lr": 2.0}
SCAFFOLD_LR: dict[str, object] = {"lr": 0.5}
STATEFUL: list[
    tuple[str, dict[str, object], Callable[[], tuple[StateDict, list[Site], list[Site]]]]
] = [
    ("fedavgm", MOMENTUM, _momentum_rounds),
    ("fedadam", ADAPTIVE, _adaptive_rounds),
    ("fedyogi", ADAPTIVE, _adaptive_rounds),
    ("fedadagrad", ADAPTIVE, _adaptive_rounds),
    ("scaffold", SCAFFOLD_LR, _scaffold_rounds),
]


@pytest.mark.parametrize(("name", "params", "rounds"), STATEFUL, ids=[s[0] for s in STATEFUL])
def test_state_round_trip_continues_identically(
    tmp_path: Path,
    name: str,
    params: dict[str, object],
    rounds: Callable[[], tuple[StateDict, list[Site], list[Site]]],
) -> None:
    weights, first, second = rounds()
    schema = schema_of(weights)

    def fresh() -> StreamingStrategy:
        strategy = strategies.create(name, params)
        assert isinstance(strategy, StreamingStrategy)
        return strategy

    running = fresh()
    running.initialize(schema)
    w1 = one_round(running, weights, first, total_sites=4)
    state = running.state_dict()
    assert state, f"{name} should keep server state after a round"
    path = tmp_path / "strategy.safetensors"
    write_safetensors(state, path)

    restored = fresh()  # as after a server restart: load the checkpoint, then initialize
    restored.load_state_dict(parse_safetensors(path.read_bytes()))
    restored.initialize(schema)
    assert_state_equal(restored.state_dict(), state)
    assert_state_equal(restored.download_extras(), running.download_extras())

    w2 = one_round(running, w1, second, round_=2, total_sites=4)
    w2_restored = one_round(restored, w1, second, round_=2, total_sites=4)
    assert_state_equal(w2_restored, w2)
    assert_state_equal(restored.state_dict(), running.state_dict())

    # the state matters: a scheme that forgot it would land elsewhere
    forgetful = fresh()
    forgetful.initialize(schema)
    w2_forgetful = one_round(forgetful, w1, second, round_=2, total_sites=4)
    forgot = (w2_forgetful["w"].tobytes(), forgetful.state_dict())
    assert forgot[0] != w2["w"].tobytes() or any(
        v.tobytes() != running.state_dict()[k].tobytes() for k, v in forgot[1].items()
    )


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_give_counters_the_plain_mean(name: str) -> None:
    strategy = strategies.create(name, {"lr": 2.0})
    assert isinstance(strategy, StreamingStrategy)
    weights: StateDict = {"w": f32([1.0]), "n": np.array([10], dtype=np.int64)}
    sites: list[Site] = [
        ("a", 1, 1, {"w": f32([1.0]), "n": np.array([2], dtype=np.int64)}),
        ("b", 1, 1, {"w": f32([1.0]), "n": np.array([4], dtype=np.int64)}),
    ]
    # n = 10 + mean(2, 4) in both rounds, whatever the optimizer does to w
    w1 = one_round(strategy, weights, sites)
    w2 = one_round(strategy, w1, sites, round_=2)
    assert w1["n"].tolist() == [13] and w2["n"].tolist() == [16]
    assert w2["n"].dtype == np.int64
    assert all(key.endswith("/w") for key in strategy.state_dict())


@pytest.mark.parametrize(
    ("name", "state", "message"),
    [
        ("fedadam", {"x/w": f32([1.0])}, r"fedadam: unexpected state tensor 'x/w'"),
        ("fedavgm", {"m/w": f32([1.0])}, r"fedavgm: unexpected state tensor 'm/w'"),
        ("scaffold", {"w": f32([1.0])}, r"scaffold: unexpected state tensor 'w'"),
    ],
)
def test_load_state_dict_refuses_foreign_state(name: str, state: StateDict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        strategies.create(name).load_state_dict(state)
