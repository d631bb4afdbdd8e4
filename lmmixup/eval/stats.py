"""Confidence intervals for evaluation numbers: every mean gets a 95% CI, every comparison a
paired one.

Both use the percentile bootstrap over rows (Efron & Tibshirani, ch. 13): resample the n rows
with replacement `n_boot` times, take the statistic of each resample, and report the
(alpha/2, 1 - alpha/2) quantiles. The paired version resamples *row indices* once and applies
them to both systems, so the row-to-row difficulty that both share cancels; that is why a paired
CI on a difference is much narrower than two independent CIs would suggest.

The generator is seeded, so a table is reproducible byte for byte. With n rows the CI's width
scales like 1/sqrt(n): at n = 16 a mean reward of 0.4 carries about +/-0.2, which is why a
difference of 0.05 there is noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its (low, high) bootstrap interval over n rows."""

    estimate: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:  # "0.375 [0.250, 0.500]"
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _quantiles(stats: np.ndarray, alpha: float) -> tuple:
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 10_000, alpha: float = 0.05,
                      seed: int = 0) -> Interval:
    """Mean of `values` (n,) with its percentile-bootstrap (1 - alpha) CI."""
    x = np.asarray(values, dtype=np.float64)  # (n,)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n) row indices
    means = x[idx].mean(axis=1)  # (n_boot,)
    return Interval(float(x.mean()), *_quantiles(means, alpha), int(x.size))


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000,
                        alpha: float = 0.05, seed: int = 0) -> Interval:
    """mean(a - b) over paired rows (a[i] and b[i] score the same example), with its CI.

    The same resampled row indices are applied to a and b: a row is drawn with both of its
    scores, which is what makes the interval paired."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # (n,), (n,)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired samples need equal non-empty 1-D shapes, got {x.shape} and {y.shape}")
    return bootstrap_mean_ci(x - y, n_boot=n_boot, alpha=alpha, seed=seed)


def excludes_zero(interval: Interval) -> bool:
    """True when the CI lies entirely on one side of 0: the difference is not read as noise."""
    return interval.low > 0 or interval.high < 0


# --- power: the smallest difference a comparison at n examples can tell from noise --------
#
# A paired delta is read as real when its 95% CI excludes 0. For a CI of half-width h centred
# near the delta, that happens once |delta| > h: so h is the smallest effect n examples can
# detect. (At |delta| = h it is detected about half the time; about 1.43 h, (1.96 + 0.84) / 1.96,
# is detected with 80% power.)

def half_width(interval: Interval) -> float:
    """(high - low) / 2 of a CI."""
    return (interval.high - interval.low) / 2


def unpaired_difference_half_width(values: Sequence[float], n_boot: int = 10_000,
                                   alpha: float = 0.05, seed: int = 0,
                                   chunk: int = 500) -> float:
    """The half-width of a (1 - alpha) percentile-bootstrap CI of mean(A) - mean(B), where A
    and B are two *independent* resamples of size n of `values` (n,): what a comparison at n
    examples would carry with no pairing, estimated from one system's per-example scores
    before a second system exists. It approaches the normal-theory value

        h = z_{1 - alpha/2} * sqrt(2) * s / sqrt(n)      (s: the population sd of `values`)

    (the difference of two independent means has variance 2 s^2 / n). Two fine-tunes of one
    base model score the same examples with positively correlated errors, so their paired CI
    is narrower: this is an upper bound, to be replaced by the paired half-width once pairs
    exist. Resamples are drawn `chunk` at a time, so memory stays at chunk x n indices."""
    x = np.asarray(values, dtype=np.float64)  # (n,)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        a = x[rng.integers(0, x.size, size=(m, x.size))].mean(axis=1)  # (m,)
        b = x[rng.integers(0, x.size, size=(m, x.size))].mean(axis=1)  # (m,)
        diffs.append(a - b)
    low, high = _quantiles(np.concatenate(diffs), alpha)  # over (n_boot,)
    return (high - low) / 2


def binary_paired_floor(n: int, alpha: float = 0.05) -> float:
    """The smallest paired difference of 0/1 scores whose percentile-bootstrap CI can exclude
    0 at n examples: k/n for the least k with (1 - k/n)^n < alpha/2.

    Why: with 0/1 scores each paired difference is -1, 0 or +1. Even when all k examples on
    which two systems differ go the same way, a resample draws none of them with probability
    (1 - k/n)^n, and while that exceeds alpha/2 the CI's low end is exactly 0. At alpha = 0.05
    that takes k = 4 for any n >= 50 (e^-k < 0.025 from k = 3.69), so about 4/n: 0.08 at n = 50.
    A paired CI measured on sets that differ on one or two examples is narrower than this, and
    would overstate what such a benchmark can detect."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    for k in range(1, n + 1):
        if (1 - k / n) ** n < alpha / 2:
            return k / n
    return 1.0
