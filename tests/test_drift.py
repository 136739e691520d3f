"""The drift watch: KS between live scores and calibration quantiles, on an injected registry, logged on crossing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ae_monitor.config import DriftConfig
from ae_monitor.drift import DriftWatch, ks_statistic
from ae_monitor.metrics import Metrics

REFERENCE = tuple(np.quantile(np.random.default_rng(0).normal(size=20_000), np.linspace(0, 1, 101)).tolist())


def _watch(registry: CollectorRegistry) -> DriftWatch:
    cfg = DriftConfig(window_scores=200, min_scores=100, ks_limit=0.3)
    gauge = Metrics(registry).score_drift.labels("pump")
    return DriftWatch.from_config(cfg, REFERENCE, bundle="pump", publish=gauge.set)


def test_scores_from_the_calibration_distribution_give_a_small_ks() -> None:
    live = np.random.default_rng(1).normal(size=500)
    assert ks_statistic(live, REFERENCE) < 0.07


def test_shifted_scores_give_the_expected_ks() -> None:
    live = np.random.default_rng(1).normal(loc=1.0, size=5000)
    assert ks_statistic(live, REFERENCE) == pytest.approx(0.38, abs=0.03)  # 2 * Phi(0.5) - 1


def test_the_gauge_reports_the_statistic_on_the_injected_registry() -> None:
    registry = CollectorRegistry()
    watch = _watch(registry)
    for score in np.random.default_rng(2).normal(size=200):
        watch.observe(float(score))
    value = registry.get_sample_value("ae_monitor_score_drift_ks", {"bundle": "pump"})
    assert value == watch.statistic
    assert value is not None
    assert value < 0.15
    assert not watch.stale


def test_no_verdict_before_min_scores() -> None:
    watch = _watch(CollectorRegistry())
    assert all(watch.observe(5.0) is None for _ in range(99))
    assert watch.statistic is None


def test_crossing_the_limit_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = _watch(CollectorRegistry())
    with caplog.at_level(logging.WARNING, logger="ae_monitor.drift"):
        for score in np.random.default_rng(3).normal(loc=2.0, size=400):
            watch.observe(float(score))
    assert watch.stale
    assert len([r for r in caplog.records if "drifted" in r.message]) == 1


# --- observe_many: a micro-batch of scores at once -----------------------------------------------------------------

CHECK_EVERY = 40  # from_config: max(10, window_scores // 5) for the 200-score window of _watch


def _recording_watch(published: list[float]) -> DriftWatch:
    cfg = DriftConfig(window_scores=200, min_scores=100, ks_limit=0.3)
    return DriftWatch.from_config(cfg, REFERENCE, bundle="pump", publish=published.append)


def test_observe_many_gives_the_statistic_of_observing_one_by_one_when_a_batch_ends_on_a_check() -> None:
    sizes = [13, 27, 40, 5, 35, 80, 1, 39, 320, 40, 17, 23, 7, 3, 30, 120]
    rng = np.random.default_rng(4)
    scores = np.concatenate([rng.normal(size=300), rng.normal(loc=1.5, size=sum(sizes) - 300)]).tolist()
    batched, one_by_one = _recording_watch([]), _recording_watch([])
    at, compared = 0, 0
    for size in sizes:
        batch = scores[at : at + size]
        at += size
        returned = batched.observe_many(batch)
        last = [one_by_one.observe(s) for s in batch][-1]
        if at % CHECK_EVERY == 0 and at >= 100:
            assert returned == last == batched.statistic == one_by_one.statistic
            assert returned is not None
            compared += 1
    assert compared == 8  # after 120, 200, 240, 560, 600, 640, 680 and 800 scores


def test_observe_many_returns_none_until_min_scores_are_in() -> None:
    published: list[float] = []
    watch = _recording_watch(published)
    assert watch.observe_many([0.0] * 99) is None  # crosses checks at 40 and 80, but under 100 scores
    assert watch.observe_many([0.0]) is None  # 100 scores, but no check at 100
    assert watch.statistic is None
    assert published == []
    assert watch.observe_many([0.0] * 20) is not None  # the check at 120


def test_observe_many_computes_once_over_the_newest_scores_and_publishes_it() -> None:
    published: list[float] = []
    watch = _recording_watch(published)
    scores = np.random.default_rng(5).normal(loc=0.5, size=350).tolist()
    statistic = watch.observe_many(scores)  # crosses 8 checks; computed once, over the last 200 scores
    assert statistic == ks_statistic(scores[-200:], REFERENCE)
    assert published == [statistic]
    assert watch.observe_many([]) is None
    assert watch.observe_many(scores[:9]) is None  # 359 scores: no check crossed
    assert published == [statistic]


def test_observe_many_sets_the_gauge_on_the_injected_registry() -> None:
    registry = CollectorRegistry()
    watch = _watch(registry)
    statistic = watch.observe_many(np.random.default_rng(2).normal(size=200).tolist())
    assert statistic is not None
    assert registry.get_sample_value("ae_monitor_score_drift_ks", {"bundle": "pump"}) == statistic


def test_observe_many_logs_a_crossing_of_the_limit_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = _watch(CollectorRegistry())
    shifted = np.random.default_rng(3).normal(loc=2.0, size=400).tolist()
    with caplog.at_level(logging.WARNING, logger="ae_monitor.drift"):
        for start in range(0, 400, 50):
            watch.observe_many(shifted[start : start + 50])
    assert watch.stale
    assert len([r for r in caplog.records if "drifted" in r.message]) == 1
