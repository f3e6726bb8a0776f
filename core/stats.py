"""Is a new version better than the old one beyond noise? A paired bootstrap over per-item scores.

Both versions are scored on the same items (test questions, queries); the differences
``new − old`` are resampled with replacement and the interval of their mean read from the
percentiles (Efron's percentile bootstrap). A gain counts only when there are enough items and
the whole interval lies above zero: the rule the fine-tune gate applies to adapters, and the one
for retrieval versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RESAMPLES = 2000
CONFIDENCE = 0.95
# Resampled means are drawn in blocks of at most this many indices, so a large set
# (thousands of queries) does not need resamples × n integers at once.
_BLOCK = 2_000_000


@dataclass(frozen=True)
class Interval:
    """The mean paired difference and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    resamples: int

    @property
    def above_zero(self) -> bool:
        return self.low > 0

    def describe(self, what: str = "", unit: str = "items") -> str:
        """E.g. "+0.06 key-fact recall, 95 % interval [0.01, 0.11] on 24 test questions"."""
        name = f" {what}" if what else ""
        return (f"{self.mean:+.3f}{name}, {self.confidence:.0%} interval "
                f"[{self.low:.3f}, {self.high:.3f}] on {self.n} {unit}").replace("%", " %", 1)


def paired_bootstrap(
    new: Sequence[float], old: Sequence[float], *, resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE, seed: int = 0,
) -> Interval:
    """The ``confidence`` interval of mean(new − old) from ``resamples`` paired resamples."""
    import numpy as np

    if len(new) != len(old):
        raise ValueError(f"paired scores differ in length ({len(new)} new, {len(old)} old)")
    if not new:
        raise ValueError("no paired scores to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, not {confidence}")
    diff = np.asarray(new, dtype=float) - np.asarray(old, dtype=float)
    n = len(diff)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK // n)
    means = np.concatenate([
        diff[rng.integers(0, n, size=(min(block, resamples - start), n))].mean(axis=1)
        for start in range(0, resamples, block)
    ])
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(mean=float(diff.mean()), low=float(low), high=float(high), n=n,
                    confidence=confidence, resamples=resamples)


@dataclass(frozen=True)
class Verdict:
    """Whether ``new`` beats ``old`` beyond noise, and why, in words."""

    better: bool
    n: int
    min_n: int
    interval: Interval | None  # None: too few items to judge
    reason: str


def beats(
    new: Sequence[float], old: Sequence[float], *, min_n: int, what: str = "",
    unit: str = "items", resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0,
) -> Verdict:
    """``new`` is better when there are at least ``min_n`` pairs and the lower bound of the
    bootstrap interval of the mean difference is above zero."""
    n = len(new)
    if n < min_n:
        return Verdict(False, n, min_n, None, f"only {n} {unit} ({min_n} needed)")
    interval = paired_bootstrap(new, old, resamples=resamples, confidence=confidence, seed=seed)
    return Verdict(interval.above_zero, n, min_n, interval, interval.describe(what, unit))
