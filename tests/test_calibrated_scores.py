"""Calibrated scores: target false-alert rates, tails beyond the sample, surprise in log space, DSPOT that starts
on short data, and a calibration record that old bundles still read. Checked against scipy."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from scipy import stats

from ae_monitor.config import CalibrationConfig
from ae_monitor.errors import BundleError
from ae_monitor.threshold import MIN_PEAKS, Calibration, OnlineThresholds, StreamingPot, calibrate


def _target(rate: float, **extra: object) -> CalibrationConfig:
    return CalibrationConfig.model_validate({"method": "target", "target_false_alerts_per_1000_windows": rate, **extra})


def test_target_rate_inside_the_sample_is_the_empirical_quantile() -> None:
    scores = np.random.default_rng(0).exponential(1.0, 50_000)
    cal = calibrate(scores, _target(5.0), window_hop_s=1.0)
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.995))
    assert cal.parameters["estimate"] == 0.0
    assert cal.notes == ()


def test_target_rate_beyond_the_sample_follows_the_fitted_generalised_pareto_tail() -> None:
    scores = np.random.default_rng(1).exponential(1.0, 2_000)
    cal = calibrate(scores, _target(0.1), window_hop_s=1.0)  # 1 in 10,000: far beyond 2,000 windows
    p = cal.parameters
    expected = p["t"] + stats.genpareto.isf(1e-4 * 2_000 / p["n_peaks"], p["xi"], scale=p["sigma"])
    assert cal.parameters["estimate"] == 1.0
    assert cal.threshold == pytest.approx(expected, rel=1e-6)
    assert cal.threshold == pytest.approx(-math.log(1e-4), rel=0.25)  # the true exponential quantile


def test_too_little_data_for_the_target_says_so_and_uses_the_largest_score(caplog: pytest.LogCaptureFixture) -> None:
    scores = np.arange(12.0)
    with caplog.at_level(logging.WARNING, logger="ae_monitor.threshold"):
        cal = calibrate(scores, _target(1.0), window_hop_s=1.0)
    assert cal.threshold == 11.0
    assert "cannot support 1 false alerts per 1,000 windows" in cal.notes[0]
    assert "largest normal score" in caplog.text


def test_surprise_above_the_tail_threshold_is_minus_log10_of_the_scipy_tail() -> None:
    scores = np.random.default_rng(2).exponential(1.0, 5_000)
    cal = calibrate(scores, _target(1.0), window_hop_s=1.0)
    p = cal.parameters
    score = p["t"] + 3.0
    expected = -math.log10(p["n_peaks"] / 5_000 * stats.genpareto.sf(3.0, p["xi"], scale=p["sigma"]))
    assert cal.surprise(score) == pytest.approx(expected, rel=1e-9)
    assert cal.surprise(cal.threshold) == pytest.approx(3.0, abs=0.05)  # 1 in 1,000 windows


def test_surprise_is_computed_in_log_space_beyond_the_smallest_float() -> None:
    cal = calibrate(np.random.default_rng(3).exponential(1.0, 5_000), _target(1.0), window_hop_s=1.0)
    far = cal.surprise(cal.parameters["t"] + 2_000.0)
    assert cal.tail_probability(cal.parameters["t"] + 2_000.0) == pytest.approx(np.finfo(float).tiny)
    assert far > 320.0 or math.isinf(far)  # not stuck at the 2.2e-308 floor (-log10 = 307.7)
    assert cal.surprise(cal.parameters["t"] + 100.0) < cal.surprise(cal.parameters["t"] + 200.0)


def test_gamma_surprise_is_minus_log10_of_the_scipy_survival_function() -> None:
    scores = np.random.default_rng(4).gamma(2.0, 3.0, 5_000)
    cal = calibrate(scores, CalibrationConfig(method="gamma"), window_hop_s=1.0)
    p = cal.parameters
    assert cal.surprise(40.0) == pytest.approx(-stats.gamma.logsf(40.0, p["shape"], loc=p["loc"], scale=p["scale"])
                                               / math.log(10))  # fmt: skip


def test_surprise_is_zero_for_ordinary_scores_and_non_decreasing() -> None:
    cal = calibrate(np.random.default_rng(5).normal(10, 1, 3_000), _target(2.0), window_hop_s=1.0)
    values = cal.surprises(np.linspace(0, 20, 200))
    assert values[0] == pytest.approx(0.0, abs=1e-3)
    assert np.all(np.diff(values) >= -1e-9)


def test_the_calibration_record_keeps_aggregation_scales_notes_and_settings_through_json() -> None:
    cal = calibrate(np.arange(12.0), _target(1.0, aggregation="max"), window_hop_s=1.0)
    from dataclasses import replace

    cal = replace(cal, aggregation="max", group_scale=(0.5, 2.0))
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    assert CalibrationConfig.model_validate(back.settings).method == "target"


def test_a_calibration_record_without_the_new_fields_still_loads_as_mean_aggregation() -> None:
    old = calibrate(np.arange(100.0), CalibrationConfig(method="quantile"), window_hop_s=1.0).to_dict()
    for key in ("aggregation", "group_scale", "notes", "settings", "tail_fit"):
        del old[key]
    cal = Calibration.from_dict(old)
    assert (cal.aggregation, cal.group_scale, cal.notes, cal.settings, cal.tail_fit) == ("mean", None, (), None, None)


def test_max_aggregation_without_group_scales_is_rejected() -> None:
    cal = calibrate(np.arange(100.0), CalibrationConfig(method="quantile"), window_hop_s=1.0)
    with pytest.raises(BundleError, match="needs group_scale"):
        Calibration.from_dict({**cal.to_dict(), "aggregation": "max"})


def test_dspot_on_too_few_calibration_scores_starts_with_a_fixed_threshold(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ae_monitor.threshold"):
        pot = StreamingPot(np.linspace(0, 1, 15), risk=1e-3, initial_quantile=0.98, fallback_threshold=3.0)
    assert pot.fallback is not None
    assert "fixed" in pot.fallback
    assert pot.threshold == 3.0
    assert pot.update(5.0) is True
    assert pot.update(0.5) is False


def test_dspot_lowers_its_initial_quantile_to_fit_a_tail_on_short_data() -> None:
    scores = np.random.default_rng(6).exponential(1.0, 64)  # the case: 64 scores, 2 above q0.98
    pot = StreamingPot(scores, risk=1e-3, initial_quantile=0.98)
    assert pot.fallback is None
    assert pot.threshold > scores.max()


def test_dspot_leaves_its_fallback_once_the_stream_gives_enough_peaks() -> None:
    pot = StreamingPot(np.linspace(0, 1, 15), risk=1e-3, initial_quantile=0.98, fallback_threshold=100.0)
    rng = np.random.default_rng(7)
    for score in rng.exponential(1.0, 3_000):
        pot.update(float(score))
    assert pot.fallback is None
    assert pot.threshold < 100.0


def test_online_thresholds_start_on_short_calibration_data() -> None:
    online = OnlineThresholds(np.linspace(0, 1, 12), CalibrationConfig(online="dspot"), fallback_threshold=2.0)
    assert online.threshold("pump-1") == 2.0
    assert len(range(MIN_PEAKS)) == MIN_PEAKS


@pytest.mark.parametrize("method", ["quantile", "gamma", "pot", "target"])
def test_surprise_is_minus_log10_of_the_tail_probability_for_every_method(method: str) -> None:
    scores = np.random.default_rng(8).gamma(2.0, 1.0, 5_000)
    cal = calibrate(scores, CalibrationConfig(method=method), window_hop_s=1.0)  # type: ignore[arg-type]
    grid = np.linspace(0.0, float(scores.max()), 41)  # inside the sample (beyond it, see the next test)
    expected = [-math.log10(cal.tail_probability(float(v))) for v in grid]
    assert np.allclose(cal.surprises(grid), expected, rtol=1e-9, atol=1e-12)
    assert cal.surprise(float(grid[7])) == pytest.approx(expected[7])
    assert np.isnan(cal.surprises([np.nan])[0])


def test_surprise_keeps_rising_past_the_largest_score_for_an_empirical_threshold() -> None:
    scores = np.random.default_rng(9).exponential(1.0, 2_000)
    cal = calibrate(scores, CalibrationConfig(method="quantile", quantile=0.99), window_hop_s=1.0)
    top = float(scores.max())
    assert cal.tail_probability(top + 1.0) == cal.tail_probability(top + 5.0)  # the empirical tail is flat there
    assert cal.surprise(top) < cal.surprise(top + 1.0) < cal.surprise(top + 5.0)
    tail = cal.tail_fit
    assert tail is not None
    decay = stats.genpareto.logsf(top + 5.0 - tail["t"], tail["xi"], scale=tail["sigma"]) - stats.genpareto.logsf(
        top + 1.0 - tail["t"], tail["xi"], scale=tail["sigma"]
    )
    assert cal.surprise(top + 5.0) - cal.surprise(top + 1.0) == pytest.approx(-decay / math.log(10))
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_surprise_of_a_bounded_pot_tail_stays_finite_and_rising_past_its_endpoint() -> None:
    scores = np.random.default_rng(3).uniform(0.0, 1.0, 2_000)  # a bounded distribution: the GPD fit has xi < 0
    cal = calibrate(scores, CalibrationConfig(method="pot"), window_hop_s=1.0)
    assert cal.parameters["xi"] < 0
    endpoint = cal.parameters["t"] + cal.parameters["sigma"] / -cal.parameters["xi"]
    far = cal.surprises([endpoint, 2 * endpoint, 10 * endpoint])
    assert np.isfinite(far).all()
    assert far[0] < far[1] < far[2]
