"""The band statistic of a window (calibration.window_statistic = "band_mean_z"): the z-score of each mel band's
mean over the window, fitted on normal windows, and one window score from it and the autoencoder's error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ae_monitor.band_statistic import BandMeanZ, fit_band_mean_z, running_means
from ae_monitor.config import CalibrationConfig
from ae_monitor.errors import BundleError, ConfigError
from ae_monitor.jobs.data import load_signals
from ae_monitor.jobs.train import calibrate_scored, scored_for_calibration
from ae_monitor.model.bundle import load_bundle
from ae_monitor.scoring import VectorScores, aggregate, scorer_for
from ae_monitor.threshold import Calibration


def test_the_statistic_is_the_mean_over_bands_of_the_squared_z_score_of_each_bands_window_mean() -> None:
    statistic = BandMeanZ(band_mean=(1.0, -2.0, 0.0), band_std=(2.0, 0.5, 1.0), error_scale=1.0, statistic_scale=1.0)
    # By hand: z = ((5 - 1) / 2, (-2 - -2) / 0.5, (3 - 0) / 1) = (2, 0, 3); mean of squares = (4 + 0 + 9) / 3.
    assert statistic.statistic([5.0, -2.0, 3.0]) == pytest.approx(13 / 3)


def test_a_window_scores_the_larger_of_its_error_and_its_statistic_each_over_its_scale() -> None:
    statistic = BandMeanZ(band_mean=(0.0, 0.0), band_std=(1.0, 1.0), error_scale=0.5, statistic_scale=10.0)
    assert statistic.score(2.0, [1.0, 1.0]) == pytest.approx(4.0)  # error 2 / 0.5 beats statistic 1 / 10
    assert statistic.score(0.1, [6.0, 0.0]) == pytest.approx(1.8)  # statistic 18 / 10 beats error 0.1 / 0.5


def test_fitting_standardises_each_band_by_its_window_means_and_scales_by_the_quantile_and_margin() -> None:
    errors = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    bands = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0], [6.0, 10.0], [8.0, 10.0]])
    fitted = fit_band_mean_z([(errors, bands)], size=2, quantile=0.5, margin=3.0)
    # Windows of 2 vectors at every vector: error means 1.5, 2.5, 3.5, 4.5; band 0 means 1, 3, 5, 7; band 1 is
    # constant (its standard deviation floored at 1e-3).
    assert fitted.band_mean == pytest.approx((4.0, 10.0))
    assert fitted.band_std == pytest.approx((np.std([1.0, 3.0, 5.0, 7.0]), 1e-3))
    assert fitted.error_scale == pytest.approx(3.0)  # the median of 1.5 ... 4.5
    z2 = np.square((np.array([1.0, 3.0, 5.0, 7.0]) - 4.0) / np.std([1.0, 3.0, 5.0, 7.0])) / 2
    assert fitted.statistic_scale == pytest.approx(3.0 * np.quantile(z2, 0.5))


def test_a_stream_shorter_than_a_window_counts_as_one_window_as_aggregate_makes_it() -> None:
    assert running_means([[1.0], [3.0]], 5).tolist() == [[2.0]]
    scores = VectorScores(np.array([1.0, 3.0]), np.zeros((2, 1)))
    windows = aggregate(scores, np.array([0, 1]), np.array([1, 2]), size=5, hop=1)
    assert [w.score for w in windows] == [2.0]


def test_windows_of_scores_with_a_statistic_join_their_mean_error_and_band_statistic() -> None:
    statistic = BandMeanZ(band_mean=(0.0,), band_std=(1.0,), error_scale=1.0, statistic_scale=1.0)
    means = np.array([[0.0], [0.0], [4.0], [4.0]])
    scores = VectorScores(np.array([1.0, 1.0, 1.0, 1.0]), np.zeros((4, 1)), means, statistic)
    windows = aggregate(scores, np.arange(4), np.arange(1, 5), size=2, hop=1)
    # Band means over the windows: 0, 2, 4 -> statistic 0, 4, 16; the error (1) wins only in the first.
    assert [w.score for w in windows] == [1.0, 4.0, 16.0]
    without = aggregate(VectorScores(scores.errors, scores.group_errors), np.arange(4), np.arange(1, 5), size=2, hop=1)
    assert [w.score for w in without] == [1.0, 1.0, 1.0]


def test_the_statistic_round_trips_through_plain_json_types() -> None:
    statistic = BandMeanZ(band_mean=(0.5, -1.0), band_std=(2.0, 3.0), error_scale=0.25, statistic_scale=7.0)
    assert BandMeanZ.from_dict(statistic.to_dict()) == statistic


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "band_max"}, "unknown window statistic"),
        ({"band_std": [1.0, 0.0]}, "band_std"),
        ({"band_std": [1.0]}, "one value per group"),
        ({"error_scale": float("nan")}, "scales"),
    ],
)
def test_an_unusable_statistic_is_refused(change: dict[str, object], message: str) -> None:
    good = BandMeanZ(band_mean=(0.5, -1.0), band_std=(2.0, 3.0), error_scale=0.25, statistic_scale=7.0).to_dict()
    with pytest.raises(ValueError, match=message):
        BandMeanZ.from_dict({**good, **change})


def test_fitting_needs_some_normal_vectors() -> None:
    with pytest.raises(ValueError, match="at least one scored vector"):
        fit_band_mean_z([(np.zeros(0), np.zeros((0, 2)))], size=2, quantile=0.99, margin=2.0)


def test_a_calibration_record_written_before_window_statistics_existed_loads_without_one(sensor_bundle: Path) -> None:
    record = load_bundle(sensor_bundle).calibration
    assert record is not None
    old = {k: v for k, v in record.to_dict().items() if k != "window_statistic"}
    assert Calibration.from_dict(old).window_statistic is None


def test_a_sensor_bundle_carrying_a_window_statistic_is_refused_naming_the_field(sensor_bundle: Path) -> None:
    bundle = load_bundle(sensor_bundle)
    assert bundle.calibration is not None
    statistic = BandMeanZ(band_mean=(0.0,) * 4, band_std=(1.0,) * 4, error_scale=1.0, statistic_scale=1.0).to_dict()
    for carried in (statistic, {"kind": "band_max"}):
        broken = replace(bundle, calibration=replace(bundle.calibration, window_statistic=carried))
        with pytest.raises(BundleError, match=r"calibration\.window_statistic"):
            scorer_for(broken)


def test_the_window_statistic_is_refused_for_sensor_features_whose_vectors_are_windows(
    sensor_bundle: Path, sensor_data: tuple[Path, Path]
) -> None:
    bundle = load_bundle(sensor_bundle)
    scored = scored_for_calibration(bundle, load_signals([sensor_data[0]], bundle.features), recent_steps=0)
    with pytest.raises(ConfigError, match=r"calibration\.window_statistic"):
        calibrate_scored(bundle, scored, CalibrationConfig(window_statistic="band_mean_z"))
