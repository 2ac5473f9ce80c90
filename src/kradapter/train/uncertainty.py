"""95% intervals and paired tests for `kradapter compare`, from per-example correctness (pure numpy).

Input: for each method and test set a 0/1 matrix ``C[s, i]``, seed ``s`` (the run's seeds, in order) by test
example ``i`` (the set's test order); for multiple choice the chosen answer's correctness. A method's score on a
set is the mean of its matrix; on a group of sets (ID, NID, OOD), the mean of the sets' scores.

Resampling (one draw of ``samples``): the seeds are drawn with replacement, once for all the sets of the unit
(a seed is one trained model: it is kept or dropped on every set together); each set's example indices are drawn
with replacement, independently of the other sets. A draw's score is the mean of ``C`` over the drawn seeds and
examples, weighted by how often each was drawn. The interval is the 2.5th and 97.5th percentiles of the draws'
scores (percentile bootstrap).

Pairs: the difference ``D = C_a - C_b`` over the seeds the two runs share and the same examples, resampled with
one draw of seed and example indices for both methods (the paired bootstrap). The test is the bootstrap's
two-sided p-value, ``p = min(1, 2 * min(#{d* <= 0}, #{d* >= 0}) / samples)`` over the draws' differences ``d*``;
a pair is "separated" only when its interval excludes 0.

Size needed to separate an observed difference ``d`` (normal approximation, ignoring that examples of one seed are
correlated): with ``sd`` the sample standard deviation (ddof 1) of the paired differences ``D[s, i]`` pooled over
the unit's seeds and examples, the smallest ``n`` (seed x example pairs) with ``1.96 * sd / sqrt(n) < |d|``,
that is ``n = floor((1.96 * sd / |d|)^2) + 1``.

Draws are made by ``numpy.random.default_rng(seed)``, in a fixed order, so the same inputs and seed give the
same intervals; methods with the same number of seeds on the same sets get the same draws.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INTERVAL_METHODS = ("bootstrap",)
DEFAULT_SAMPLES = 2000
DEFAULT_SEED = 0
Z95 = 1.959963984540054  # the standard normal's 97.5th percentile; printed as 1.96
_CHUNK = 256  # draws made and summed together: memory stays at _CHUNK x examples numbers

RESAMPLING = (
    "95% percentile bootstrap: each draw resamples the seeds with replacement (jointly across a group's test "
    "sets) and each test set's examples with replacement; pairs use the same draw for both methods over their "
    "common seeds; p: two-sided bootstrap p-value, 2 x the smaller share of draws at or beyond 0"
)


def parse_interval(value: str) -> str:
    """An argparse ``type=`` for ``--interval``: one of INTERVAL_METHODS, else one line naming the values."""
    if value not in INTERVAL_METHODS:
        raise argparse.ArgumentTypeError(f"unknown interval method {value!r}; accepted: {', '.join(INTERVAL_METHODS)}")
    return value


def parse_samples(value: str) -> int:
    """An argparse ``type=`` for ``--bootstrap-samples``: an integer >= 100."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer expected, got {value!r}") from None
    if n < 100:
        raise argparse.ArgumentTypeError(f"must be an integer >= 100 (a 95% interval's tails need draws), got {n}")
    return n


@dataclass(frozen=True)
class Interval:
    """A score (or difference) and its 95% interval; for differences also the p-value and the size needed."""

    estimate: float
    low: float
    high: float
    p_value: float | None = None
    needed_n: int | None = None  # seed x example pairs to separate the observed difference; None: no difference
    n_now: int | None = None  # seed x example pairs the difference was computed from

    @property
    def separated(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def _as_matrix(c) -> np.ndarray:
    m = np.asarray(c, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"per-example results must be a seeds x examples matrix, got shape {m.shape}")
    return m


def unit_score(matrices: Sequence[np.ndarray]) -> float:
    """The score of a unit (one test set, or a group of sets): the mean over sets of each matrix's mean."""
    return float(np.mean([_as_matrix(c).mean() for c in matrices]))


def bootstrap_scores(matrices: Sequence[np.ndarray], samples: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The unit's score under each of ``samples`` draws (see the module docstring), shape ``(samples,)``.

    Every matrix must have the same number of seeds (rows). The draws depend only on the seed, the number of
    seeds and the sets' sizes, so a difference's draws are the two methods' draws subtracted.
    """
    mats = [_as_matrix(c) for c in matrices]
    n_seeds = mats[0].shape[0]
    if any(m.shape[0] != n_seeds for m in mats):
        raise ValueError(f"every test set needs the same seeds, got {[m.shape[0] for m in mats]} rows")
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=samples).astype(np.float64)
    total = np.zeros(samples)
    for m in mats:
        n = m.shape[1]
        for start in range(0, samples, _CHUNK):
            part = slice(start, min(start + _CHUNK, samples))
            example_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=part.stop - part.start)
            # draw b's weighted mean: sum_s sum_i w[b,s] C[s,i] v[b,i] / (seeds x examples)
            total[part] += ((seed_counts[part] @ m) * example_counts).sum(axis=1) / (n_seeds * n)
    return total / len(mats)


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(low), float(high)


def score_interval(matrices: Sequence[np.ndarray], samples: int, seed: int = DEFAULT_SEED) -> Interval:
    """One method's score on a unit with its 95% bootstrap interval."""
    low, high = _percentiles(bootstrap_scores(matrices, samples, seed))
    return Interval(unit_score(matrices), low, high)


def needed_pairs(differences: np.ndarray, observed: float) -> int | None:
    """``floor((1.96 sd / |observed|)^2) + 1``: seed x example pairs for ``1.96 sd / sqrt(n) < |observed|``,
    ``sd`` the sample standard deviation of ``differences``; None when nothing was observed to separate."""
    if observed == 0 or differences.size < 2:
        return None
    sd = float(np.std(differences, ddof=1))
    return math.floor((Z95 * sd / abs(observed)) ** 2) + 1


def paired_difference(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], samples: int, seed: int = DEFAULT_SEED
) -> Interval:
    """Method a minus method b on one unit: ``a[j]`` and ``b[j]`` are the same set's matrices over the same seeds
    (rows) and examples (columns). Paired bootstrap interval, bootstrap p-value and the size needed."""
    diffs = []
    for x, y in zip(a, b, strict=True):
        x, y = _as_matrix(x), _as_matrix(y)
        if x.shape != y.shape:
            raise ValueError(f"paired results need the same seeds x examples, got {x.shape} and {y.shape}")
        diffs.append(x - y)
    draws = bootstrap_scores(diffs, samples, seed)
    low, high = _percentiles(draws)
    p = min(1.0, 2 * min(int((draws <= 0).sum()), int((draws >= 0).sum())) / samples)
    observed = unit_score(diffs)
    pooled = np.concatenate([d.ravel() for d in diffs])
    return Interval(observed, low, high, p, needed_pairs(pooled, observed), int(pooled.size))
