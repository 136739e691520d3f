"""Drift episodes (ae_monitor/drift.py): a statistic that hovers about the limit during a shift is one episode, warned
once and handed once to per-stream learning; an episode ends only after a whole window of scores back in line."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ae_monitor.config import DriftConfig
from ae_monitor.drift import DriftWatch

REFERENCE = tuple(np.quantile(np.random.default_rng(0).normal(size=20_000), np.linspace(0, 1, 101)).tolist())
WINDOW = 200  # from_config checks every 40 scores of a 200-score window


def watch() -> DriftWatch:
    return DriftWatch.from_config(DriftConfig(window_scores=WINDOW, min_scores=100, ks_limit=0.3), REFERENCE,
                                  bundle="pump-7")  # fmt: skip


def feed(drift: DriftWatch, loc: float, n: int, seed: int) -> list[float]:
    """`n` scores around `loc` (0: as calibrated), 40 at a time; the statistics computed."""
    scores = np.random.default_rng(seed).normal(loc=loc, size=n).tolist()
    found = [drift.observe_many(scores[i : i + 40]) for i in range(0, n, 40)]
    return [s for s in found if s is not None]


def crossings(statistics: list[float], *, limit: float) -> int:
    """How often the statistic went above `limit`, each time from below 80 % of it (or from the start)."""
    count, armed = 0, True
    for statistic in statistics:
        if armed and statistic > limit:
            count, armed = count + 1, False
        elif statistic < 0.8 * limit:
            armed = True
    return count


def warnings(caplog: pytest.LogCaptureFixture) -> int:
    return len([r for r in caplog.records if "drifted" in r.message])


def test_a_statistic_hovering_about_the_limit_during_a_shift_is_one_episode_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drift = watch()
    feed(drift, 0.0, WINDOW, seed=1)
    statistics = []
    with caplog.at_level(logging.INFO, logger="ae_monitor.drift"):
        for i in range(8):  # an unsettled operating point: in and out of the calibrated range
            statistics += feed(drift, 2.0, 120, seed=10 + i) + feed(drift, 0.0, 200, seed=20 + i)
    # The statistic went above the limit after having fallen below 80 % of it, more than once ...
    assert crossings(statistics, limit=0.3) >= 3, statistics
    # ... and it was said once, and handed on once.
    assert warnings(caplog) == 1
    assert drift.take_episode()
    assert not drift.take_episode()
    assert drift.stale


def test_an_episode_ends_after_a_whole_window_back_in_line_and_a_later_drift_is_a_new_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drift = watch()
    with caplog.at_level(logging.INFO, logger="ae_monitor.drift"):
        feed(drift, 2.0, WINDOW, seed=2)
        assert drift.take_episode()
        feed(drift, 0.0, WINDOW, seed=3)  # back in line, but the last window is not all quiet checks yet
        assert drift.stale
        feed(drift, 0.0, WINDOW, seed=4)
        assert not drift.stale
        assert [r.message for r in caplog.records if "back in line" in r.message]
        feed(drift, 2.0, WINDOW, seed=5)
    assert warnings(caplog) == 2
    assert drift.take_episode()
