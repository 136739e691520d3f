"""Cross-fitted calibration: out-of-fold scores over all normal data, per-channel scales, max aggregation, and a
`calibrate` that keeps the bundle's own settings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ae_monitor.config import CalibrationConfig, Config, config_from_dict
from ae_monitor.jobs.data import Signal
from ae_monitor.jobs.train import calibrate_bundle, fit_bundle, fold_split
from ae_monitor.model.bundle import load_bundle, save_bundle
from ae_monitor.scoring import OUT_OF_RANGE_Z, out_of_range, scorer_for

CHANNELS = ("a", "b", "c")


def _config(**calibration: object) -> Config:
    return config_from_dict({
        "features": {"kind": "sensor", "sensor": {"window_samples": 8}},
        "model": {"kind": "dense", "hidden_units": [16], "latent_dim": 3},
        "training": {"epochs": 3, "batch_size": 64},
        "calibration": {"method": "target", "target_false_alerts_per_1000_windows": 10.0, "folds": 3,
                        "aggregation": "max", **calibration},
    })  # fmt: skip


def _signal(n: int = 600, seed: int = 0) -> Signal:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    values = np.stack([np.sin(t / 10), np.cos(t / 10), 0.1 * rng.normal(size=n)], axis=1) + 0.05 * rng.normal(
        size=(n, 3)
    )
    return Signal("normal", values, t, CHANNELS)


def test_blocked_folds_hold_out_one_contiguous_block_and_train_on_the_rest() -> None:
    train, held_out = fold_split([_signal(90)], 1, 3, min_rows=8)
    assert [len(s.samples) for s in held_out] == [30]
    assert [float(s.ts_s[0]) for s in train] == [0.0, 60.0]
    assert float(held_out[0].ts_s[0]) == 30.0


def test_pieces_shorter_than_a_window_are_dropped() -> None:
    train, held_out = fold_split([_signal(20)], 0, 3, min_rows=8)
    assert not held_out
    assert [len(s.samples) for s in train] == [14]


def test_cross_fitted_calibration_scores_every_block_out_of_fold() -> None:
    bundle = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    cal = bundle.calibration
    assert cal is not None
    assert cal.n_samples == 3 * (200 - 8 + 1)  # every window inside each held-out block
    assert cal.method == "target"
    assert cal.aggregation == "max"
    assert cal.group_scale is not None
    assert len(cal.group_scale) == len(CHANNELS)
    assert bundle.extra["calibration_folds"] == 3


def test_max_aggregation_is_what_the_bundles_scorer_computes() -> None:
    bundle = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert bundle.calibration.group_scale is not None
    vectors = bundle.extractor.transform(_signal(100, seed=1).samples).data
    scores = scorer_for(bundle).score(vectors)
    expected = (scores.group_errors / 8 / np.asarray(bundle.calibration.group_scale)).max(axis=1)
    assert np.allclose(scores.errors, expected)


def test_one_channel_spike_is_not_averaged_away_by_max_aggregation() -> None:
    fit_max = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    fit_mean = fit_bundle(_config(aggregation="mean"), [_signal()], name="x", progress=False).bundle
    spiked = _signal(100, seed=2).samples.copy()
    spiked[50:58, 2] += 1.0  # one channel of three, a few steps
    ratios = []
    for bundle in (fit_max, fit_mean):
        vectors = bundle.extractor.transform(spiked).data
        ratios.append(scorer_for(bundle).score(vectors).errors.max() / bundle.threshold)
    assert ratios[0] > ratios[1]


def test_data_too_short_for_the_folds_is_calibrated_in_sample_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        bundle = fit_bundle(_config(folds=10), [_signal(60)], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert "too short for 10-fold cross-fitting" in bundle.calibration.notes[0]
    assert "too short" in caplog.text


def test_calibrate_keeps_the_bundles_own_settings_unless_told_otherwise(tmp_path: Path) -> None:
    bundle = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    save_bundle(bundle, tmp_path / "b")
    _signal(400, seed=3)
    np.savetxt(tmp_path / "new.csv", _signal(400, seed=3).samples, delimiter=",", header="a,b,c", comments="")
    cal = calibrate_bundle(tmp_path / "b", [tmp_path / "new.csv"])
    assert cal.method == "target"
    assert cal.settings == bundle.calibration.settings if bundle.calibration else False
    assert load_bundle(tmp_path / "b").calibration == cal
    assert cal.aggregation == "max"
    assert cal.group_scale == bundle.calibration.group_scale
    other = calibrate_bundle(tmp_path / "b", [tmp_path / "new.csv"], CalibrationConfig(method="quantile"))
    assert other.method == "quantile"


def test_inputs_far_outside_the_training_range_are_reported_per_channel() -> None:
    bundle = fit_bundle(_config(folds=0, method="quantile", aggregation="mean"), [_signal()], name="x",
                        progress=False).bundle  # fmt: skip
    samples = _signal(50, seed=4).samples.copy()
    samples[10:20, 1] = -60.0
    found = out_of_range(bundle, samples)
    assert [(o.channel, o.rows, o.first_row) for o in found] == [("b", 10, 10)]
    assert found[0].z < -OUT_OF_RANGE_Z
    assert "outside the range the model was trained on" in found[0].message()
    assert out_of_range(bundle, _signal(50, seed=5).samples) == []


def test_the_skab_benchmark_fits_each_file_through_trains_cross_fitted_path() -> None:
    from ae_monitor.jobs.benchmark import fit_file_bundle

    bundle = fit_file_bundle(_config(folds=2), _signal(400))
    assert bundle.extra["calibration_folds"] == 2
    assert bundle.calibration is not None
    assert bundle.calibration.method == "target"


def test_the_calibrate_command_takes_a_stated_false_alert_rate(tmp_path: Path) -> None:
    from ae_monitor.cli import main

    bundle = fit_bundle(_config(folds=0, method="quantile", aggregation="mean"), [_signal()], name="x",
                        progress=False).bundle  # fmt: skip
    save_bundle(bundle, tmp_path / "b")
    np.savetxt(tmp_path / "new.csv", _signal(600, seed=6).samples, delimiter=",", header="a,b,c", comments="")
    args = ["calibrate", "--bundle", str(tmp_path / "b"), "--data", str(tmp_path / "new.csv")]
    assert main([*args, "--target-false-alerts-per-1000", "5"]) == 0
    cal = load_bundle(tmp_path / "b").calibration
    assert cal is not None
    assert (cal.method, cal.parameters["target_false_alerts_per_1000_windows"]) == ("target", 5.0)
