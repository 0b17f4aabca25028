"""Byzantine-robust aggregators: coordinate-wise median and trimmed mean, Krum, Multi-Krum.

Median, trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
          Learning: Towards Optimal Statistical Rates", ICML 2018; with byzantine = f > 0
          (the default, 1) they first set aside the f updates with the worst Krum scores,
          as Bulyan does (El Mhamdi, Guerraoui, Rouault, ICML 2018), see _CoordinateWise.
Krum, Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
          Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Multi-Krum as
          evaluated by El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
          Distributed Learning in Byzantium", ICML 2018). Reference code: Flower's
          FedMedian, FedTrimmedAvg and Krum strategies.

Client: exactly as FedAvg. It trains locally and uploads its delta (local minus global
weights) with its example count; there is no client hook and no upload extra.

Server: every scheme here needs all of a round's updates at once, so it is a
BatchStrategy. It reads them from the disk-spilled blobs a block at a time: for one
tensor name it copies the same BLOCK elements of every site into one buffer (memory
O(sites x BLOCK), never whole models or whole tensors), aggregates them, and moves on.
Krum's pairwise distance matrix is accumulated over the blocks the same way. The new
global model is global + aggregated delta.

Conventions shared by all four:
- Unweighted: every site counts once, whatever its example count; a large example
  count must not buy a Byzantine site more influence. Sites that report no examples
  trained nothing and are left out, as FedAvg gives them no weight; if no site is left,
  the global model is kept.
- Integer tensors (counters such as BatchNorm's num_batches_tracked) are aggregated in
  float64 and rounded to the nearest integer (ties to even) when they are added to the
  global tensor. Krum's distances use the floating tensors only: counters are
  bookkeeping, not parameters, and a difference of a few steps would swamp the
  distances between weight deltas.
- Deterministic: sites are taken in sorted order, ties in Krum's scores go to the
  earlier site, and every reduction has a fixed order.
- No server state between rounds (nothing to checkpoint).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedvox.server.strategies.base import BatchStrategy, UpdateSet, apply_step
from fedvox.wire.tensors import StateDict

log = logging.getLogger(__name__)


BLOCK = 1 << 16  # elements per site read at a time: memory O(sites x BLOCK), not x tensor


def _site_blocks(
    updates: UpdateSet, sites: Sequence[str], name: str, size: int, dtype: np.dtype[Any]
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, rows): elements [start, stop) of tensor `name` of every site in `sites`,
    one row per site, in one reused buffer. Each site's tensor is read once, as a view.

    At 50 sites and the default UNet, stacking whole tensors instead held 431 MB for the
    median and 2.2 GB for Krum's distances (docs/performance.md, section 2)."""
    flats = [updates.tensor(site, name).reshape(-1) for site in sites]
    buffer = np.empty((len(sites), min(BLOCK, size)), dtype=dtype)
    for start in range(0, size, BLOCK):
        stop = min(start + BLOCK, size)
        rows = buffer[:, : stop - start]
        for row, flat in enumerate(flats):
            rows[row] = flat[start:stop]
        yield start, stop, rows


def _trimmed_mean(stacked: np.ndarray, cut: int) -> np.ndarray:
    """Mean over axis 0 after dropping the `cut` smallest and largest values of each entry.

    Sorts `stacked` in place when there is something to drop; the mean is accumulated in
    float64, row after row, so it does not depend on how the entries were blocked."""
    n = stacked.shape[0]
    if cut:
        stacked.sort(axis=0)
    out: np.ndarray = stacked[cut : n - cut].mean(axis=0, dtype=np.float64)
    return out


def _median_cut(n: int) -> int:
    """The trim that leaves the middle value (odd n) or the two middle values (even n)."""
    return (n - 1) // 2


def coordinate_wise_step(
    global_weights: StateDict, updates: UpdateSet, sites: Sequence[str], cut: int
) -> dict[str, np.ndarray]:
    """Each global tensor's delta: the trimmed mean over `sites` (empty if no site)."""
    step: dict[str, np.ndarray] = {}
    if not sites:
        return step
    for name, base in sorted(global_weights.items()):
        # floats keep their width (selection is exact); integer counters become float64
        dtype = base.dtype if base.dtype.kind == "f" else np.dtype(np.float64)
        out = np.empty(base.size, dtype=np.float64)
        for start, stop, rows in _site_blocks(updates, sites, name, base.size, dtype):
            out[start:stop] = _trimmed_mean(rows, cut)
        step[name] = out.reshape(base.shape)
    return step


def _counted_sites(updates: UpdateSet) -> list[str]:
    """Sites that trained on at least one example, in sorted order."""
    return sorted(s for s in updates.sites if updates.num_examples(s) > 0)


class _CoordinateWise(BatchStrategy):
    """Aggregates each coordinate independently: a trimmed mean with a per-round cut.

    Why the Krum pre-selection (byzantine = f > 0): a coordinate-wise order statistic is
    biased by a Byzantine update that sits inside the honest range on many coordinates,
    as a sign-flipped delta does. With 1 of 5 sites flipping its delta, the plain median
    and trimmed mean lost 0.019 to 0.058 test Dice against a clean run over 3 to 20
    rounds, and 0.018 and 0.006 at 30 (docs/robustness.md). Across whole updates, such
    a delta is the one farthest from the others, so the f updates with the worst Krum
    scores are set aside first and the statistic runs over the other n - f. Pre-selection
    needs n > 2f + 2 sites, as Krum does; a round with fewer uses every site.
    """

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.selected: tuple[str, ...] = ()  # last round's sites that entered the statistic

    @abstractmethod
    def cut(self, n: int) -> int:
        """How many values to drop at each end of every coordinate, for n sites."""

    def aggregate(self, updates: UpdateSet) -> StateDict:
        sites = _counted_sites(updates)
        f = int(self.params.byzantine)
        if f > 0 and len(sites) > 2 * f + 2:
            sites = sorted(krum_select(self.global_weights, updates, sites, f, len(sites) - f)[0])
        self.selected = tuple(sites)
        step = coordinate_wise_step(self.global_weights, updates, sites, self.cut(len(sites)))
        return apply_step(self.global_weights, step)


@dataclass(frozen=True)
class ByzantineParams:
    """The parameter every scheme here shares."""

    scheme: ClassVar[str] = ""  # for the error message
    # f: how many sites may be Byzantine. Krum and the pre-selection of median and trimmed
    # mean act on it only with more than 2f + 2 sites; 0 = plain median / trimmed mean
    byzantine: int = 1

    def __post_init__(self) -> None:
        if self.byzantine < 0:
            raise ValueError(f"{self.scheme}: byzantine must be >= 0, got {self.byzantine}")


@dataclass(frozen=True)
class MedianParams(ByzantineParams):
    scheme: ClassVar[str] = "median"


class Median(_CoordinateWise):
    """Coordinate-wise median of the sites' deltas (Yin et al. 2018).

    Client: plain FedAvg-style local training; uploads its delta. Server: for every
    coordinate j, w_j <- w_j + median_i delta_{i,j}, every site counting once (for an even
    number of sites, the mean of the two middle values). Tolerates fewer than half of the
    sites sending arbitrary updates.

    byzantine = f (default 1): with more than 2f + 2 sites, the f updates with the worst
    Krum scores are set aside before the median (see _CoordinateWise); byzantine=0 is the
    plain median of every site, which a round with 2f + 2 sites or fewer also uses.
    """

    name = "median"
    Params = MedianParams

    def cut(self, n: int) -> int:
        return _median_cut(n)


@dataclass(frozen=True)
class TrimmedMeanParams(ByzantineParams):
    scheme: ClassVar[str] = "trimmed_mean"
    beta: float = 0.2  # fraction of sites dropped at EACH end of every coordinate (Flower: 0.2)

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"trimmed_mean: beta must lie in [0, 0.5), got {self.beta}")
        super().__post_init__()


class TrimmedMean(_CoordinateWise):
    """Coordinate-wise trimmed mean of the sites' deltas (Yin et al. 2018).

    Client: plain FedAvg-style local training; uploads its delta. Server: for every
    coordinate, drop the floor(beta * n) largest and the floor(beta * n) smallest of the n
    sites' values and average the rest (unweighted), as Flower's FedTrimmedAvg and
    scipy.stats.trim_mean do. With fewer than 1/beta sites nothing is dropped (the plain
    mean); beta = 0 is always the plain mean.

    byzantine = f (default 1): with more than 2f + 2 sites, the f updates with the worst
    Krum scores are set aside first and n counts the sites left (see _CoordinateWise);
    byzantine=0 trims over every site, as a round with 2f + 2 sites or fewer also does.
    """

    name = "trimmed_mean"
    Params = TrimmedMeanParams

    def cut(self, n: int) -> int:
        return int(self.params.beta * n)


@dataclass(frozen=True)
class KrumParams(ByzantineParams):
    scheme: ClassVar[str] = "krum"


@dataclass(frozen=True)
class MultiKrumParams(ByzantineParams):
    scheme: ClassVar[str] = "multikrum"
    keep: int = 0  # m: how many lowest-scoring updates to average; 0 = n - f

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep < 0:
            raise ValueError(f"multikrum: keep must be >= 0 (0 = n - byzantine), got {self.keep}")


def pairwise_sq_distances(
    global_weights: StateDict, updates: UpdateSet, sites: Sequence[str], names: Sequence[str]
) -> np.ndarray:
    """D[i, k] = sum over the tensors `names` of ||delta_i - delta_k||^2, in float64.

    Reads one tensor of every site at a time, a block at a time; the matrix accumulates
    over blocks and tensors in a fixed order, so it is the same on every run."""
    n = len(sites)
    distances = np.zeros((n, n), dtype=np.float64)
    for name in names:
        size = global_weights[name].size
        for _, _, rows in _site_blocks(updates, sites, name, size, np.dtype(np.float64)):
            for i in range(n - 1):
                diff = rows[i + 1 :] - rows[i]
                d = np.einsum("ij,ij->i", diff, diff)
                distances[i, i + 1 :] += d
                distances[i + 1 :, i] += d
    return distances


def krum_scores(distances: np.ndarray, byzantine: int) -> np.ndarray:
    """score_i = sum of the n - f - 2 smallest squared distances from i to the others."""
    n = distances.shape[0]
    neighbours = n - byzantine - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.sort(np.delete(distances[i], i))
        scores[i] = others[:neighbours].sum()
    return scores


def krum_select(
    global_weights: StateDict, updates: UpdateSet, sites: Sequence[str], f: int, m: int
) -> tuple[tuple[str, ...], dict[str, float]]:
    """The m sites with the lowest Krum scores (ties: the earlier site in `sites`) and every
    site's score. Distances use the floating tensors only (see the module docstring)."""
    floats = sorted(k for k, v in global_weights.items() if v.dtype.kind == "f")
    scores = krum_scores(pairwise_sq_distances(global_weights, updates, sites, floats), f)
    order = np.argsort(scores, kind="stable")
    selected = tuple(sites[int(i)] for i in order[:m])
    return selected, {site: float(s) for site, s in zip(sites, scores, strict=True)}


class _KrumFamily(BatchStrategy):
    """Scores every update by its distance to its nearest neighbours; averages the best."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.scores: dict[str, float] = {}  # last round's Krum score per site (for logs/tests)
        self.selected: tuple[str, ...] = ()  # last round's sites whose deltas were averaged
        self.fell_back = False  # last round had too few sites and used the median

    @abstractmethod
    def keep(self, n: int) -> int:
        """How many of the lowest-scoring updates to average, for n sites."""

    def aggregate(self, updates: UpdateSet) -> StateDict:
        f = int(self.params.byzantine)
        sites = _counted_sites(updates)
        self.scores, self.selected, self.fell_back = {}, (), False
        if not sites:
            return apply_step(self.global_weights, {})
        n = len(sites)
        if n <= 2 * f + 2:
            # Krum's guarantee needs n > 2f + 2. Rather than stop the federation when sites
            # drop out, use the coordinate-wise median, which still tolerates any f < n / 2.
            log.warning(
                "%s: %d site(s) is too few for byzantine=%d (needs more than %d); "
                "using the coordinate-wise median this round",
                self.name,
                n,
                f,
                2 * f + 2,
            )
            self.fell_back, self.selected = True, tuple(sites)
            step = coordinate_wise_step(self.global_weights, updates, sites, _median_cut(n))
            return apply_step(self.global_weights, step)
        m = min(self.keep(n), n - f)
        selected, self.scores = krum_select(self.global_weights, updates, sites, f, m)
        self.selected = tuple(sorted(selected))
        step = coordinate_wise_step(self.global_weights, updates, self.selected, 0)  # the mean
        return apply_step(self.global_weights, step)


class Krum(_KrumFamily):
    """Krum (Blanchard et al. 2017): apply the one delta closest to its neighbours.

    Client: plain FedAvg-style local training; uploads its delta. Server: with n sites
    and f = `byzantine`, score_i = sum of ||delta_i - delta_k||^2 over the n - f - 2
    sites k nearest to i; the new model is global + delta_{argmin score} (ties: the first
    site in sorted order). Distances use the floating tensors; the chosen site's integer
    counters come with its delta.

    byzantine defaults to 1 (tolerate one bad site). Krum needs n > 2f + 2 sites (5 for
    f = 1). A round with fewer sites, e.g. after dropouts or in a 3-site simulation, does
    not fail: it logs a warning and applies the coordinate-wise median of all deltas,
    which still tolerates any f < n / 2. Set byzantine=0 to run Krum proper from 3 sites.
    """

    name = "krum"
    Params = KrumParams

    def keep(self, n: int) -> int:
        return 1


class MultiKrum(_KrumFamily):
    """Multi-Krum (Blanchard et al. 2017): average the m deltas with the lowest Krum scores.

    Client: plain FedAvg-style local training; uploads its delta. Server: scores as Krum
    (n - f - 2 nearest neighbours, f = `byzantine`), then the unweighted mean of the m =
    `keep` lowest-scoring deltas (keep=0 means m = n - f, as in the paper; m never exceeds
    n - f, so the f presumed-Byzantine updates are never averaged in). keep=1 is Krum.

    byzantine defaults to 1. Multi-Krum needs n > 2f + 2 sites; with fewer it logs a
    warning and applies the coordinate-wise median, as Krum does.
    """

    name = "multikrum"
    Params = MultiKrumParams

    def keep(self, n: int) -> int:
        keep = int(self.params.keep)
        return keep if keep > 0 else n - int(self.params.byzantine)
