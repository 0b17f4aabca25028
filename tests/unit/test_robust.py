"""Tests of the robust aggregators (fedvox.server.strategies.robust) on spilled updates."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fedvox.server import strategies
from fedvox.server.journal import RoundJournal, SpilledUpdateSet
from fedvox.server.strategies import RoundContext, robust
from fedvox.server.strategies.robust import Krum, Median, MultiKrum, TrimmedMean, krum_select
from fedvox.wire.settings import ConfigError
from fedvox.wire.tensors import Array, StateDict, to_safetensors
from tests.helpers import assert_state_equal, blake3_hex, f32

CONTEXT = RoundContext(round=1, sampled=(), total_sites=7)


def spilled(
    tmp_path: Path, updates: Sequence[tuple[str, int, StateDict]], round_: int = 1
) -> SpilledUpdateSet:
    """The updates as the orchestrator hands them over: blobs on disk, read back lazily."""
    journal = RoundJournal.create(tmp_path / "journal", round_, {})
    for site, examples, tensors in updates:
        blob = to_safetensors(tensors)
        journal.spill(site, f"task-{site}", blob, blake3_hex(blob), examples, 1, {})
    return SpilledUpdateSet(list(journal.entries.values()))


class Recording:
    """An UpdateSet that logs which (site, tensor) is read, in order."""

    def __init__(self, inner: SpilledUpdateSet) -> None:
        self.inner = inner
        self.reads: list[tuple[str, str]] = []

    @property
    def sites(self) -> Sequence[str]:
        return self.inner.sites

    def num_examples(self, site: str) -> int:
        return self.inner.num_examples(site)

    def local_steps(self, site: str) -> int:
        return self.inner.local_steps(site)

    def tensor(self, site: str, name: str) -> Array:
        self.reads.append((site, name))
        return self.inner.tensor(site, name)


# ---- coordinate-wise median and trimmed mean: five sites ----

GLOBAL5: StateDict = {
    "w": f32([10.0, 20.0, 30.0]),
    "n": np.array([100, 0], dtype=np.int64),  # a counter such as num_batches_tracked
}
# (site, examples, deltas); examples differ on purpose: these schemes ignore them
FIVE: list[tuple[str, int, StateDict]] = [
    ("a", 1, {"w": f32([50.0, -1.0, 7.0]), "n": np.array([5, 1], dtype=np.int64)}),
    ("b", 9, {"w": f32([1.0, 8.0, -50.0]), "n": np.array([1, 2], dtype=np.int64)}),
    ("c", 2, {"w": f32([7.0, 1.0, 100.0]), "n": np.array([2, 2], dtype=np.int64)}),
    ("d", 5, {"w": f32([3.0, -4.0, 0.0]), "n": np.array([4, 4], dtype=np.int64)}),
    ("e", 3, {"w": f32([2.0, 6.0, 2.0]), "n": np.array([3, 1], dtype=np.int64)}),
]
# Per coordinate, sorted over the five sites:
#   w[0]: 1, 2, 3, 7, 50       median 3   trimmed (beta 0.2: drop 1 each end) (2+3+7)/3 = 4
#   w[1]: -4, -1, 1, 6, 8      median 1   trimmed (-1+1+6)/3 = 2
#   w[2]: -50, 0, 2, 7, 100    median 2   trimmed (0+2+7)/3 = 3
#   n[0]: 1, 2, 3, 4, 5        median 3   trimmed 3
#   n[1]: 1, 1, 2, 2, 4        median 2   trimmed (1+2+2)/3 = 1.67 -> rounded 2
# Plain means: w = [63/5, 10/5, 59/5] = [12.6, 2, 11.8]; the outliers drag it far off.
# The tests of the plain statistics set byzantine=0; the defaults (byzantine=1) first set
# aside the update with the worst Krum score, tested below the plain ones.
PLAIN = {"byzantine": 0}


def run(
    strategy: strategies.Strategy,
    tmp_path: Path,
    updates: Sequence[tuple[str, int, StateDict]] = FIVE,
) -> StateDict:
    assert isinstance(strategy, strategies.BatchStrategy)
    strategy.begin(GLOBAL5, CONTEXT)
    return strategy.aggregate(spilled(tmp_path, updates))


def test_median_of_five_updates(tmp_path: Path) -> None:
    result = run(strategies.create("median", PLAIN), tmp_path)
    assert sorted(result) == ["n", "w"]
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], [13.0, 21.0, 32.0])
    assert result["n"].dtype == np.int64
    np.testing.assert_array_equal(result["n"], [103, 2])


def test_trimmed_mean_of_five_updates(tmp_path: Path) -> None:
    strategy = strategies.create("trimmed_mean", PLAIN)  # Flower's default beta = 0.2
    assert isinstance(strategy, TrimmedMean)
    assert strategy.params.beta == 0.2
    result = run(strategy, tmp_path)
    np.testing.assert_allclose(result["w"].astype(np.float64), [14.0, 22.0, 33.0], rtol=1e-6)
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["n"], [103, 2])
    assert result["n"].dtype == np.int64


def test_trimmed_mean_beta_zero_is_the_plain_mean(tmp_path: Path) -> None:
    result = run(strategies.create("trimmed_mean", {"beta": 0.0, **PLAIN}), tmp_path)
    np.testing.assert_allclose(result["w"].astype(np.float64), [22.6, 22.0, 41.8], rtol=1e-6)
    # n: [15/5, 10/5] = [3, 2]
    np.testing.assert_array_equal(result["n"], [103, 2])


def test_trimmed_mean_with_a_large_beta_is_the_median(tmp_path: Path) -> None:
    # beta 0.4 of 5 sites drops 2 at each end: only the middle value is left
    result = run(TrimmedMean(TrimmedMean.Params(beta=0.4, byzantine=0)), tmp_path)
    np.testing.assert_array_equal(result["w"], [13.0, 21.0, 32.0])


def test_median_of_an_even_number_of_sites_averages_the_middle_two(tmp_path: Path) -> None:
    # without e: w[0]: 1, 3, 7, 50 -> 5;  w[1]: -4, -1, 1, 8 -> 0;  w[2]: -50, 0, 7, 100 -> 3.5
    # n[0]: 1, 2, 4, 5 -> 3;  n[1]: 1, 2, 2, 4 -> 2
    # by default too: 4 sites are too few to set one aside (Krum needs more than 2f + 2)
    strategy = Median()
    result = run(strategy, tmp_path, FIVE[:4])
    assert strategy.selected == ("a", "b", "c", "d")
    np.testing.assert_array_equal(result["w"], [15.0, 20.0, 33.5])
    np.testing.assert_array_equal(result["n"], [103, 2])


def test_sites_without_examples_are_left_out(tmp_path: Path) -> None:
    huge: StateDict = {"w": f32([1e6, 1e6, 1e6]), "n": np.array([1000, 1000], dtype=np.int64)}
    # counted, the sixth update would move every median to the mean of the middle two
    result = run(Median(Median.Params(byzantine=0)), tmp_path, [*FIVE, ("z", 0, huge)])
    np.testing.assert_array_equal(result["w"], [13.0, 21.0, 32.0])


def test_no_site_with_examples_keeps_the_global_model(tmp_path: Path) -> None:
    result = run(Median(), tmp_path, [("a", 0, FIVE[0][2])])
    np.testing.assert_array_equal(result["w"], GLOBAL5["w"])
    np.testing.assert_array_equal(result["n"], GLOBAL5["n"])


def test_global_weights_are_not_modified(tmp_path: Path) -> None:
    run(TrimmedMean(), tmp_path)
    np.testing.assert_array_equal(GLOBAL5["w"], [10.0, 20.0, 30.0])


def test_reads_one_tensor_of_every_site_at_a_time(tmp_path: Path) -> None:
    updates = Recording(spilled(tmp_path, FIVE))
    strategy = Median(Median.Params(byzantine=0))
    strategy.begin(GLOBAL5, CONTEXT)
    strategy.aggregate(updates)
    sites = ["a", "b", "c", "d", "e"]
    assert updates.reads == [(s, "n") for s in sites] + [(s, "w") for s in sites]


# ---- the defaults: Krum pre-selection, then the statistic ----

# Squared distances between FIVE's float deltas (w only; counters do not count):
#   a-b 5731, a-c 10502, a-d 2267, a-e 2378, b-c 22585, b-d 2648, b-e 2709,
#   c-d 10041, c-e 9654, d-e 105
# n = 5, f = 1: each score sums the n - f - 2 = 2 smallest distances to the others:
FIVE_SCORES = {"a": 4645, "b": 5357, "c": 19695, "d": 2372, "e": 2483}  # c is set aside
# Over a, b, d, e:
#   w[0]: 1, 2, 3, 50      median (2+3)/2 = 2.5     mean 56/4 = 14
#   w[1]: -4, -1, 6, 8     median (-1+6)/2 = 2.5    mean 9/4 = 2.25
#   w[2]: -50, 0, 2, 7     median (0+2)/2 = 1       mean -41/4 = -10.25
#   n[0]: 1, 3, 4, 5       median 3.5 -> 4 (ties to even)   mean 3.25 -> 3
#   n[1]: 1, 1, 2, 4       median 1.5 -> 2                  mean 2


def test_median_sets_aside_the_worst_krum_score_first(tmp_path: Path) -> None:
    strategy = strategies.create("median")
    assert isinstance(strategy, Median)
    assert strategy.params.byzantine == 1
    result = run(strategy, tmp_path)
    assert strategy.selected == ("a", "b", "d", "e")
    np.testing.assert_array_equal(result["w"], [12.5, 22.5, 31.0])
    np.testing.assert_array_equal(result["n"], [104, 2])


def test_trimmed_mean_sets_aside_the_worst_krum_score_first(tmp_path: Path) -> None:
    strategy = strategies.create("trimmed_mean")
    assert isinstance(strategy, TrimmedMean)
    assert (strategy.params.beta, strategy.params.byzantine) == (0.2, 1)
    result = run(strategy, tmp_path)
    # beta 0.2 of the 4 sites left trims int(0.8) = 0 per end: their plain mean
    assert strategy.selected == ("a", "b", "d", "e")
    np.testing.assert_array_equal(result["w"], [24.0, 22.25, 19.75])
    np.testing.assert_array_equal(result["n"], [103, 2])


def test_the_pre_selection_uses_krum_scores(tmp_path: Path) -> None:
    sites = ["a", "b", "c", "d", "e"]
    selected, scores = krum_select(GLOBAL5, spilled(tmp_path, FIVE), sites, 1, 4)
    assert scores == pytest.approx(FIVE_SCORES, rel=1e-12)
    assert selected == ("d", "e", "a", "b")  # lowest score first


# ---- Krum and Multi-Krum: five honest sites, two colluding outliers ----

GLOBAL7: StateDict = {"w": f32([0.0]), "b": f32([0.0]), "n": np.array(10, dtype=np.int64)}
# each site's delta is a point (w, b), split over two tensors so distances must accumulate
POINTS = {
    "bad1": (10.0, 10.0),
    "bad2": (10.0, 11.0),
    "h1": (0.0, 0.0),
    "h2": (1.0, 0.0),
    "h3": (0.0, 1.0),
    "h4": (1.0, 1.0),
    "h5": (0.0, 2.0),
}
# the integer counter would make h3 lose if counters counted in the distances
COUNTS = {"bad1": 1000, "bad2": 1000, "h1": 3, "h2": 3, "h3": 4, "h4": 3, "h5": 3}
SEVEN: list[tuple[str, int, StateDict]] = [
    (
        site,
        10,
        {"w": f32([w]), "b": f32([b]), "n": np.array(COUNTS[site], dtype=np.int64)},
    )
    for site, (w, b) in POINTS.items()
]
# Squared distances between honest sites:
#   h1-h2 1, h1-h3 1, h1-h4 2, h1-h5 4, h2-h3 2, h2-h4 1, h2-h5 5, h3-h4 1, h3-h5 1, h4-h5 2
# from bad1 (10,10): h1 200, h2 181, h3 181, h4 162, h5 164;  bad1-bad2 1
# from bad2 (10,11): h1 221, h2 202, h3 200, h4 181, h5 181
# n = 7, f = 2: each score sums the n - f - 2 = 3 smallest distances to the others:
SCORES = {
    "bad1": 1 + 162 + 164,  # 327
    "bad2": 1 + 181 + 181,  # 363
    "h1": 1 + 1 + 2,  # 4
    "h2": 1 + 1 + 2,  # 4
    "h3": 1 + 1 + 1,  # 3  <- Krum's choice
    "h4": 1 + 1 + 2,  # 4
    "h5": 1 + 2 + 4,  # 7
}


def test_krum_picks_the_honest_update_closest_to_its_neighbours(tmp_path: Path) -> None:
    strategy = Krum(Krum.Params(byzantine=2))
    strategy.begin(GLOBAL7, CONTEXT)
    result = strategy.aggregate(spilled(tmp_path, SEVEN))
    assert strategy.scores == pytest.approx(SCORES, rel=1e-12)
    assert strategy.selected == ("h3",)
    assert not strategy.fell_back
    np.testing.assert_array_equal(result["w"], [0.0])
    np.testing.assert_array_equal(result["b"], [1.0])
    assert result["n"].dtype == np.int64 and result["n"].shape == ()
    assert int(result["n"]) == 14  # 10 + h3's counter delta 4


def test_multikrum_averages_the_honest_cluster(tmp_path: Path) -> None:
    strategy = MultiKrum(MultiKrum.Params(byzantine=2))  # keep=0: m = n - f = 5
    strategy.begin(GLOBAL7, CONTEXT)
    result = strategy.aggregate(spilled(tmp_path, SEVEN))
    assert strategy.selected == ("h1", "h2", "h3", "h4", "h5")
    # w: (0+1+0+1+0)/5 = 0.4;  b: (0+0+1+1+2)/5 = 0.8;  n: (3+3+4+3+3)/5 = 3.2 -> 3
    np.testing.assert_allclose(result["w"].astype(np.float64), [0.4], rtol=1e-6)
    np.testing.assert_allclose(result["b"].astype(np.float64), [0.8], rtol=1e-6)
    assert int(result["n"]) == 13


def test_multikrum_keeps_the_m_lowest_scores(tmp_path: Path) -> None:
    strategy = strategies.create("multikrum", {"byzantine": 2, "keep": 4})
    assert isinstance(strategy, MultiKrum)
    strategy.begin(GLOBAL7, CONTEXT)
    result = strategy.aggregate(spilled(tmp_path, SEVEN))
    # scores 3 (h3) and 4 (h1, h2, h4); h5 (7) is left out
    assert strategy.selected == ("h1", "h2", "h3", "h4")
    # w: (0+1+0+1)/4 = 0.5;  b: (0+0+1+1)/4 = 0.5;  n: (3+3+4+3)/4 = 3.25 -> 3
    np.testing.assert_array_equal(result["w"], [0.5])
    np.testing.assert_array_equal(result["b"], [0.5])
    assert int(result["n"]) == 13


def test_multikrum_never_averages_more_than_n_minus_f(tmp_path: Path) -> None:
    strategy = MultiKrum(MultiKrum.Params(byzantine=2, keep=7))
    strategy.begin(GLOBAL7, CONTEXT)
    strategy.aggregate(spilled(tmp_path, SEVEN))
    assert strategy.selected == ("h1", "h2", "h3", "h4", "h5")


def test_krum_reads_tensors_one_name_at_a_time(tmp_path: Path) -> None:
    updates = Recording(spilled(tmp_path, SEVEN))
    strategy = Krum(Krum.Params(byzantine=2))
    strategy.begin(GLOBAL7, CONTEXT)
    strategy.aggregate(updates)
    sites = sorted(POINTS)
    # distances over the float tensors (counters excluded), then the chosen site's delta
    assert updates.reads == (
        [(s, "b") for s in sites]
        + [(s, "w") for s in sites]
        + [("h3", "b"), ("h3", "n"), ("h3", "w")]
    )


def test_krum_with_too_few_sites_falls_back_to_the_median(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = strategies.create("krum")  # byzantine=1: Krum needs more than 4 sites
    assert isinstance(strategy, Krum)
    assert strategy.params.byzantine == 1
    strategy.begin(GLOBAL7, CONTEXT)
    three = [u for u in SEVEN if u[0] in ("bad1", "h1", "h2")]
    with caplog.at_level(logging.WARNING):
        result = strategy.aggregate(spilled(tmp_path, three))
    assert strategy.fell_back
    assert "3 site(s) is too few for byzantine=1" in caplog.text
    # median of w: 10, 0, 1 -> 1;  b: 10, 0, 0 -> 0;  n: 1000, 3, 3 -> 3
    np.testing.assert_array_equal(result["w"], [1.0])
    np.testing.assert_array_equal(result["b"], [0.0])
    assert int(result["n"]) == 13


def test_krum_without_byzantine_sites_runs_from_three_sites(tmp_path: Path) -> None:
    strategy = Krum(Krum.Params(byzantine=0))
    strategy.begin(GLOBAL7, CONTEXT)
    three = [u for u in SEVEN if u[0] in ("bad1", "h1", "h2")]
    strategy.aggregate(spilled(tmp_path, three))
    # one nearest neighbour each: bad1 181 (h2), h1 1 (h2), h2 1 (h1): a tie, the first wins
    assert not strategy.fell_back
    assert strategy.scores == {"bad1": 181.0, "h1": 1.0, "h2": 1.0}
    assert strategy.selected == ("h1",)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("trimmed_mean", {"beta": 0.5}, r"beta must lie in \[0, 0.5\), got 0.5"),
        ("trimmed_mean", {"beta": -0.1}, r"beta must lie in \[0, 0.5\), got -0.1"),
        ("krum", {"byzantine": -1}, r"krum: byzantine must be >= 0, got -1"),
        ("multikrum", {"keep": -2}, r"multikrum: keep must be >= 0"),
        ("multikrum", {"byzantine": "x"}, r"multikrum.byzantine"),
        ("median", {"beta": 0.1}, r"strategy 'median' has no parameter 'beta'"),
        ("median", {"byzantine": -1}, r"median: byzantine must be >= 0, got -1"),
        ("trimmed_mean", {"byzantine": -3}, r"trimmed_mean: byzantine must be >= 0, got -3"),
    ],
)
def test_bad_parameters_are_rejected(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        strategies.create(name, params)


def test_robust_schemes_are_registered_and_stateless() -> None:
    for name, cls in [
        ("median", Median),
        ("trimmed_mean", TrimmedMean),
        ("krum", Krum),
        ("multikrum", MultiKrum),
    ]:
        strategy = strategies.create(name)
        assert type(strategy) is cls
        assert isinstance(strategy, strategies.BatchStrategy)
        assert strategy.state_dict() == {}
        assert strategy.client_config(1) == {}
        assert strategy.upload_extras({}) == {}


def test_pairwise_distances_are_exact_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tensors longer than the block (here 3 elements) are summed block by block."""
    monkeypatch.setattr(robust, "BLOCK", 3)
    rng = np.random.default_rng(7)
    shapes = {"a": (2, 5), "b": (4,), "c": (1,)}
    base: StateDict = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    deltas: list[tuple[str, int, StateDict]] = [
        (f"s{i}", 1, {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
        for i in range(5)
    ]
    got = robust.pairwise_sq_distances(
        base, spilled(tmp_path, deltas), [s for s, _, _ in deltas], ["a", "b", "c"]
    )
    # independently: scipy over each site's whole update as one float64 vector
    vectors = np.stack(
        [np.concatenate([t[k].astype(np.float64).ravel() for k in "abc"]) for _, _, t in deltas]
    )
    np.testing.assert_allclose(got, cdist(vectors, vectors, "sqeuclidean"), rtol=1e-12)


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean", "krum"])
def test_results_do_not_depend_on_the_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    """The hand-computed results above, with FIVE's 3-element tensors read 2 elements at a time."""
    whole = run(strategies.create(strategy), tmp_path / "whole")
    monkeypatch.setattr(robust, "BLOCK", 2)
    blocked = run(strategies.create(strategy), tmp_path / "blocked")
    assert_state_equal(blocked, whole)
    if strategy == "median":  # the default's figures, computed by hand above
        np.testing.assert_array_equal(blocked["w"], [12.5, 22.5, 31.0])
