"""core.stats: the paired bootstrap and the "beyond noise" rule, on scores made to order."""

from __future__ import annotations

import random

import pytest

import core.stats
from core.stats import beats, paired_bootstrap


def scores(n: int, gain: float, noise: float, seed: int = 1) -> tuple[list[float], list[float]]:
    """(new, old): old uniform in [0, 1], new = old + gain + uniform noise in [-noise, noise]."""
    rng = random.Random(seed)
    old = [rng.random() for _ in range(n)]
    return [o + gain + rng.uniform(-noise, noise) for o in old], old


def test_a_clear_gain_has_its_whole_interval_above_zero() -> None:
    new, old = scores(30, gain=0.1, noise=0.1)
    iv = paired_bootstrap(new, old, resamples=2000, confidence=0.95, seed=0)
    assert iv.n == 30 and iv.resamples == 2000 and iv.confidence == 0.95
    assert 0 < iv.low < iv.mean < iv.high
    assert iv.mean == pytest.approx(sum(new) / 30 - sum(old) / 30)
    assert iv.above_zero


def test_noise_gives_an_interval_that_straddles_zero() -> None:
    new, old = scores(30, gain=0.0, noise=0.3)
    iv = paired_bootstrap(new, old, seed=0)
    assert iv.low < 0 < iv.high and not iv.above_zero


def test_the_interval_narrows_with_more_questions_and_widens_with_confidence() -> None:
    few = paired_bootstrap(*scores(20, 0.05, 0.3), seed=0)
    many = paired_bootstrap(*scores(400, 0.05, 0.3), seed=0)
    assert many.high - many.low < (few.high - few.low) / 2
    new, old = scores(40, 0.05, 0.3)
    assert (paired_bootstrap(new, old, confidence=0.99).high
            - paired_bootstrap(new, old, confidence=0.99).low
            > paired_bootstrap(new, old, confidence=0.8).high
            - paired_bootstrap(new, old, confidence=0.8).low)


def test_the_same_seed_gives_the_same_interval() -> None:
    new, old = scores(25, 0.02, 0.2)
    assert paired_bootstrap(new, old, seed=3) == paired_bootstrap(new, old, seed=3)
    # A constant difference has no spread at all.
    iv = paired_bootstrap([0.5] * 5, [0.25] * 5)
    assert (iv.low, iv.mean, iv.high) == (0.25, 0.25, 0.25)


def test_large_sets_are_resampled_in_blocks_with_the_same_answer(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = scores(500, 0.02, 0.3)
    whole = paired_bootstrap(new, old, resamples=1000)
    monkeypatch.setattr(core.stats, "_BLOCK", 500 * 7)  # 7 resamples per block, the last short
    blocked = paired_bootstrap(new, old, resamples=1000)
    assert blocked.resamples == 1000
    assert blocked.low == pytest.approx(whole.low, abs=0.01)
    assert blocked.high == pytest.approx(whole.high, abs=0.01)


def test_unpaired_or_empty_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no paired scores"):
        paired_bootstrap([], [])


def test_beats_needs_enough_items_and_a_lower_bound_above_zero() -> None:
    new, old = scores(4, gain=0.5, noise=0.0)
    too_few = beats(new, old, min_n=20, unit="test questions")
    assert not too_few.better and too_few.interval is None
    assert too_few.reason == "only 4 test questions (20 needed)"

    new, old = scores(24, gain=0.06, noise=0.05)
    gain = beats(new, old, min_n=20, what="key-fact recall", unit="test questions")
    assert gain.better and gain.n == 24 and gain.interval is not None
    iv = gain.interval
    assert gain.reason == (f"{iv.mean:+.3f} key-fact recall, 95 % interval "
                           f"[{iv.low:.3f}, {iv.high:.3f}] on 24 test questions")

    new, old = scores(24, gain=0.0, noise=0.3)
    noise = beats(new, old, min_n=20)
    assert not noise.better and noise.interval is not None and noise.interval.low < 0
