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
