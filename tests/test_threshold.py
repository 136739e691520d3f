"""Threshold calibration: each method recovers known quantiles; the calibration explains and round-trips itself."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from scipy import stats

from ae_monitor.config import CalibrationConfig
from ae_monitor.errors import BundleError, ConfigError, DataError
from ae_monitor.records import WindowScore
from ae_monitor.threshold import (
    Calibration,
    OnlineThresholds,
    StreamingPot,
    calibrate,
    gamma_logsf,
    gpd_logsf,
    scores_sha256,
)

HOP_S = 0.5


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_quantile_method_recovers_a_uniform_quantile() -> None:
    scores = _rng().uniform(0.0, 1.0, 20_000)
    cal = calibrate(scores, CalibrationConfig(method="quantile", quantile=0.95), window_hop_s=HOP_S)
    assert cal.threshold == pytest.approx(0.95, abs=0.01)
    assert cal.parameters == {"quantile": 0.95}


def test_gamma_method_recovers_the_true_ppf_within_3_percent() -> None:
    scores = _rng().gamma(2.0, 3.0, 20_000)
    cal = calibrate(scores, CalibrationConfig(method="gamma", gamma_percentile=0.9), window_hop_s=HOP_S)
    assert cal.threshold == pytest.approx(stats.gamma.ppf(0.9, 2.0, scale=3.0), rel=0.03)
    assert cal.parameters["shape"] == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize(
    ("name", "true_quantile"),
    [("exponential", -math.log(1e-4)), ("pareto", 1e-4 ** (-1 / 3) - 1)],
)
def test_pot_method_recovers_an_extreme_quantile_within_15_percent(name: str, true_quantile: float) -> None:
    rng = _rng(1)
    scores = rng.exponential(1.0, 50_000) if name == "exponential" else rng.pareto(3.0, 50_000)
    cfg = CalibrationConfig(method="pot", pot_risk=1e-4, pot_initial_quantile=0.98)
    cal = calibrate(scores, cfg, window_hop_s=HOP_S)
    assert cal.threshold == pytest.approx(true_quantile, rel=0.15)
    assert cal.parameters["n_peaks"] == pytest.approx(1000, abs=1)
    assert cal.parameters["risk"] == 1e-4


def test_pot_tail_probability_at_the_threshold_is_the_risk() -> None:
    cfg = CalibrationConfig(method="pot", pot_risk=1e-4)
    cal = calibrate(_rng().exponential(1.0, 50_000), cfg, window_hop_s=HOP_S)
    assert cal.tail_probability(cal.threshold) == pytest.approx(1e-4, rel=1e-6)


def test_false_alarm_rate_converts_the_hourly_rate_through_the_hop() -> None:
    cfg = CalibrationConfig(method="false_alarm_rate", false_alarms_per_hour=1.0)
    cal = calibrate(_rng().exponential(1.0, 50_000), cfg, window_hop_s=0.5)
    assert cal.parameters["windows_per_hour"] == 7200.0
    assert cal.parameters["risk"] == pytest.approx(1 / 7200)
    assert "sigma" in cal.parameters  # deep in the tail: the POT model is used
    assert cal.threshold == pytest.approx(math.log(7200), rel=0.15)


def test_false_alarm_rate_outside_the_tail_uses_the_empirical_quantile() -> None:
    cfg = CalibrationConfig(method="false_alarm_rate", false_alarms_per_hour=3600.0)  # q = 0.5 per window
    scores = _rng().uniform(0.0, 1.0, 10_000)
    cal = calibrate(scores, cfg, window_hop_s=1.0)
    assert cal.parameters["risk"] == 0.5
    assert "sigma" not in cal.parameters
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.5))


def test_false_alarm_rate_is_capped_at_half_the_windows() -> None:
    cfg = CalibrationConfig(method="false_alarm_rate", false_alarms_per_hour=1e6)
    cal = calibrate(_rng().uniform(size=1000), cfg, window_hop_s=1.0)
    assert cal.parameters["risk"] == 0.5


@pytest.mark.parametrize("method", ["quantile", "gamma", "pot", "false_alarm_rate"])
def test_tail_probability_is_monotone_and_inside_0_1(method: str) -> None:
    scores = _rng().gamma(2.0, 3.0, 20_000)
    cal = calibrate(scores, CalibrationConfig.model_validate({"method": method}), window_hop_s=HOP_S)
    grid = np.linspace(-5.0, 200.0, 2_001)
    probabilities = np.array([cal.tail_probability(float(s)) for s in grid])
    assert np.all(probabilities > 0.0)
    assert np.all(probabilities <= 1.0)
    assert np.all(np.diff(probabilities) <= 0.0)
    assert probabilities[0] == 1.0


def test_gamma_tail_probability_at_the_threshold_is_one_minus_the_percentile() -> None:
    cal = calibrate(_rng().gamma(2.0, 3.0, 5_000), CalibrationConfig(method="gamma"), window_hop_s=HOP_S)
    assert cal.tail_probability(cal.threshold) == pytest.approx(0.1, rel=1e-6)


def test_empirical_tail_probability_follows_the_reference_quantiles() -> None:
    scores = np.linspace(0.0, 100.0, 10_001)
    cal = calibrate(scores, CalibrationConfig(method="quantile"), window_hop_s=HOP_S)
    assert cal.tail_probability(25.0) == pytest.approx(0.75)
    assert cal.tail_probability(99.5) == pytest.approx(0.005)
    assert cal.tail_probability(1e9) == pytest.approx(1 / 10_002)


def test_tail_probability_of_a_point_mass_counts_the_whole_mass() -> None:
    scores = np.concatenate([np.zeros(900), np.linspace(1.0, 2.0, 100)])
    cal = calibrate(scores, CalibrationConfig(method="quantile"), window_hop_s=HOP_S)
    assert cal.tail_probability(0.0) == 1.0


def test_calibration_records_its_data_and_reference_quantiles() -> None:
    scores = _rng().uniform(size=500)
    cal = calibrate(scores, CalibrationConfig(method="quantile"), window_hop_s=HOP_S, created_at="2025-01-01T00:00:00")
    assert cal.n_samples == 500
    assert cal.data_sha256 == scores_sha256(scores)
    assert len(cal.reference_quantiles) == 101
    assert cal.reference_quantiles[0] == scores.min()
    assert cal.reference_quantiles[100] == scores.max()
    assert cal.created_at == "2025-01-01T00:00:00"


def test_created_at_defaults_to_utc_now() -> None:
    cal = calibrate([1.0, 2.0, 3.0], CalibrationConfig(method="quantile"), window_hop_s=HOP_S)
    assert cal.created_at.endswith("+00:00")


def test_scores_sha256_hashes_little_endian_float64_bytes() -> None:
    expected = hashlib.sha256(np.array([1.0, 2.0], dtype="<f8").tobytes()).hexdigest()
    assert scores_sha256(np.array([1, 2], dtype=np.float32)) == expected


@pytest.mark.parametrize("method", ["quantile", "gamma", "pot", "false_alarm_rate"])
def test_to_dict_from_dict_round_trips_through_json(method: str) -> None:
    cal = calibrate(
        _rng().gamma(2.0, 3.0, 5_000), CalibrationConfig.model_validate({"method": method}), window_hop_s=HOP_S
    )
    restored = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert restored == cal
    assert restored.tail_probability(20.0) == cal.tail_probability(20.0)


def test_from_dict_names_a_missing_field() -> None:
    d = calibrate([1.0, 2.0, 3.0], CalibrationConfig(method="quantile"), window_hop_s=HOP_S).to_dict()
    del d["threshold"]
    with pytest.raises(BundleError, match=r"calibration\.threshold"):
        Calibration.from_dict(d)


def test_from_dict_rejects_an_unknown_method() -> None:
    d = calibrate([1.0, 2.0, 3.0], CalibrationConfig(method="quantile"), window_hop_s=HOP_S).to_dict()
    d["method"] = "magic"
    with pytest.raises(BundleError, match="unknown calibration method"):
        Calibration.from_dict(d)


@pytest.mark.parametrize("scores", [[], [1.0]])
def test_fewer_than_two_scores_are_rejected(scores: list[float]) -> None:
    with pytest.raises(DataError, match="at least 2 scores"):
        calibrate(scores, CalibrationConfig(), window_hop_s=HOP_S)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_rejected(bad: float) -> None:
    with pytest.raises(DataError, match=r"1 of 3 calibration scores are NaN or infinite \(first at index 1\)"):
        calibrate([1.0, bad, 2.0], CalibrationConfig(), window_hop_s=HOP_S)


def test_two_dimensional_scores_are_rejected() -> None:
    with pytest.raises(DataError, match="1-D"):
        calibrate(np.ones((3, 2)), CalibrationConfig(), window_hop_s=HOP_S)


def test_pot_with_too_few_peaks_says_how_many_scores_are_needed() -> None:
    cfg = CalibrationConfig(method="pot", pot_initial_quantile=0.98, pot_risk=1e-4)
    with pytest.raises(DataError, match=r"gave 4; calibrate on at least 452 scores"):
        calibrate(_rng().exponential(size=200), cfg, window_hop_s=HOP_S)
    assert calibrate(_rng().exponential(size=452), cfg, window_hop_s=HOP_S).parameters["n_peaks"] == 10  # enough
    with pytest.raises(DataError, match=r"451 scores gave 9"):  # and no fewer is
        calibrate(_rng().exponential(size=451), cfg, window_hop_s=HOP_S)


def test_pot_risk_outside_the_fitted_tail_is_a_config_error() -> None:
    cfg = CalibrationConfig(method="pot", pot_initial_quantile=0.98, pot_risk=0.05)
    with pytest.raises(ConfigError, match=r"calibration\.pot_risk"):
        calibrate(_rng().exponential(size=5_000), cfg, window_hop_s=HOP_S)


def test_gamma_on_constant_scores_is_rejected() -> None:
    with pytest.raises(DataError, match="scores that vary"):
        calibrate(np.full(100, 0.5), CalibrationConfig(method="gamma"), window_hop_s=HOP_S)


def test_a_non_positive_hop_is_rejected() -> None:
    with pytest.raises(ValueError, match="window_hop_s"):
        calibrate([1.0, 2.0], CalibrationConfig(), window_hop_s=0.0)


def test_margin_multiplies_the_calibrated_threshold() -> None:
    scores = _rng().uniform(0.0, 1.0, 10_000)
    plain = calibrate(scores, CalibrationConfig(method="quantile", quantile=0.9), window_hop_s=HOP_S)
    wide = calibrate(scores, CalibrationConfig(method="quantile", quantile=0.9, margin=1.5), window_hop_s=HOP_S)
    assert wide.threshold == pytest.approx(1.5 * plain.threshold)
    assert wide.parameters["margin"] == 1.5


def test_streaming_pot_starts_at_the_batch_pot_threshold() -> None:
    scores = _rng().exponential(1.0, 20_000)
    batch = calibrate(scores, CalibrationConfig(method="pot", pot_risk=1e-3), window_hop_s=HOP_S)
    assert StreamingPot(scores, risk=1e-3, initial_quantile=0.98).threshold == pytest.approx(batch.threshold)


def test_streaming_pot_never_learns_from_flagged_scores() -> None:
    pot = StreamingPot(_rng().exponential(1.0, 5000), risk=1e-3, initial_quantile=0.98)
    before = pot.threshold
    assert all(pot.update(100.0) for _ in range(200))
    assert pot.threshold == before


def test_drift_aware_streaming_pot_follows_a_level_shift() -> None:
    rng = _rng(2)
    pot = StreamingPot(rng.exponential(1.0, 5000), risk=1e-3, initial_quantile=0.98, depth=50)
    before = pot.threshold
    shifted = rng.exponential(1.0, 3000) + 3.0
    flags = [pot.update(float(s)) for s in shifted]
    assert pot.threshold == pytest.approx(before + 3.0, abs=1.0)  # the level is a 50-score mean
    assert np.mean(flags[-1000:]) < 0.01  # after adapting, the shifted normal scores are not flagged


def test_online_thresholds_keep_one_tail_model_per_stream() -> None:
    scores = _rng().exponential(1.0, 5000)
    online = OnlineThresholds(scores, CalibrationConfig(method="pot", online="dspot", dspot_depth=20))
    window = WindowScore("a", "b", 0.0, 1.0, 0.5, 0.0, ())
    judged = online(window)
    assert judged.threshold == pytest.approx(online.threshold("b-stream-unseen"), rel=0.2)
    for i in range(500):
        online(WindowScore("a", "b", float(i), i + 1.0, 4.0 + _rng(i).exponential(), 0.0, ()))
    assert online.threshold("a") > online.threshold("other") + 2.0


@pytest.mark.parametrize("xi", [-0.8, -0.25, -1e-9, 0.0, 1e-9, 0.3, 1.5])
def test_the_closed_form_gpd_log_survival_is_scipys_across_and_outside_the_support(xi: float) -> None:
    x = np.concatenate([[-3.0, -1e-12, 0.0, 1e-12, np.nan], np.linspace(0.01, 20.0, 400), [1.25, 4.0, 1e6]])
    expected = stats.genpareto.logsf(x, xi, scale=0.8)
    np.testing.assert_allclose(gpd_logsf(x, xi, scale=0.8), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [0.3, 1.0, 2.5, 40.0])
def test_the_closed_form_gamma_log_survival_is_scipys_below_at_and_far_past_its_location(shape: float) -> None:
    x = np.concatenate([[-5.0, 0.5, 1.0, np.nan], np.linspace(1.001, 60.0, 400), [1e4]])
    expected = stats.gamma.logsf(x, shape, loc=1.0, scale=0.7)
    np.testing.assert_allclose(gamma_logsf(x, shape, loc=1.0, scale=0.7), expected, rtol=1e-12, atol=1e-15)
