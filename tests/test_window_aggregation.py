"""WindowAggregator computes all windows of a push at once; each must be, to the last bit, what its own slice gives."""

from __future__ import annotations

import numpy as np
import pytest

from ae_monitor.band_statistic import BandMeanZ
from ae_monitor.scoring import ScoredWindow, VectorScores, WindowAggregator, aggregate, shares


def _scores(n: int, groups: int, *, statistic: bool) -> VectorScores:
    rng = np.random.default_rng(n + groups)
    fitted = BandMeanZ(tuple(rng.normal(size=groups)), tuple(rng.uniform(0.5, 2.0, groups)), 0.3, 2.0)
    means = rng.normal(size=(n, groups)) if statistic else None
    return VectorScores(rng.gamma(1.0, size=n), rng.gamma(1.0, size=(n, groups)), means, fitted if statistic else None)


def _one_by_one(scores: VectorScores, first: np.ndarray, end: np.ndarray, size: int, hop: int) -> list[ScoredWindow]:
    """Each window on its own: its slice's window_score and shares (what the aggregator computed before)."""
    return [
        ScoredWindow(
            scores.window_score(lo, lo + size),
            _window_shares(scores, lo, lo + size),
            float(first[lo]),
            float(end[lo + size - 1]),
        )
        for lo in range(0, len(scores) - size + 1, hop)
    ]


def _window_shares(scores: VectorScores, lo: int, hi: int) -> tuple[float, ...]:
    """What a window's alert names: each band's squared z where the band statistic decided the window's score, each
    group's summed error otherwise."""
    if scores.statistic is not None and scores.band_means is not None:
        means, statistic = scores.band_means[lo:hi].mean(axis=0), scores.statistic
        by_error = float(scores.errors[lo:hi].mean()) / statistic.error_scale
        if float(statistic.statistic(means)) / statistic.statistic_scale > by_error:
            return shares(statistic.band_terms(means))
    return shares(scores.group_errors[lo:hi].sum(axis=0))


@pytest.mark.parametrize("statistic", [False, True])
@pytest.mark.parametrize(("size", "hop", "chunk"), [(31, 16, 31), (31, 16, 7), (31, 16, 2000), (4, 1, 3), (5, 5, 1)])
def test_windows_pushed_in_any_chunking_equal_each_window_computed_alone_to_the_last_bit(
    statistic: bool, size: int, hop: int, chunk: int
) -> None:
    scores, n = _scores(600, 128, statistic=statistic), 600
    first, end = np.arange(n) * 0.032, np.arange(n) * 0.032 + 0.16
    aggregator, pushed = WindowAggregator(size, hop), []
    for lo in range(0, n, chunk):
        pushed += aggregator.push(scores.slice(lo, lo + chunk), first[lo : lo + chunk], end[lo : lo + chunk])
    assert pushed == _one_by_one(scores, first, end, size, hop)  # exact float equality, field by field


def test_a_sequence_shorter_than_a_window_is_one_window_over_all_of_it() -> None:
    scores = _scores(10, 3, statistic=True)
    first, end = np.arange(10.0), np.arange(1.0, 11.0)
    assert aggregate(scores, first, end, size=31, hop=16) == _one_by_one(scores, first, end, 10, 10)


def test_a_window_decided_by_the_band_statistic_names_the_bands_whose_level_moved() -> None:
    # Band 0 reconstructs worst in every vector; band 2's level is 3 standard deviations off in the second half.
    n, fitted = 40, BandMeanZ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), error_scale=1.0, statistic_scale=1.0)
    group_errors = np.tile([0.6, 0.3, 0.1], (n, 1))
    means = np.zeros((n, 3))
    means[20:, 2] = 3.0
    scores = VectorScores(group_errors.sum(axis=1), group_errors, means, fitted)
    quiet, moved = aggregate(scores, np.arange(n * 1.0), np.arange(1.0, n + 1), size=20, hop=20)
    assert quiet.score == pytest.approx(1.0)  # the error decided (statistic 0): band 0 is named, as before
    assert quiet.contributions == pytest.approx((0.6, 0.3, 0.1))
    assert moved.score == pytest.approx(3.0)  # the statistic decided (9 / 3 bands): band 2 alone is named
    assert moved.contributions == pytest.approx((0.0, 0.0, 1.0))
