"""The benchmark's reference detectors: causal, fitted on training rows only, limits from training rows only."""

from __future__ import annotations

import numpy as np

from ae_monitor.baselines import PcaT2Q, RollingZScore, rolling_z


def test_rolling_z_is_causal_a_later_change_leaves_earlier_scores_alone() -> None:
    x = np.random.default_rng(0).normal(size=(400, 3))
    changed = x.copy()
    changed[300:] += 50.0
    assert np.array_equal(rolling_z(x)[:300], rolling_z(changed)[:300], equal_nan=True)


def test_rolling_z_takes_the_largest_channel_against_the_previous_100_rows() -> None:
    x = np.random.default_rng(1).normal(size=(300, 2))
    x[250, 1] = 9.0
    history = x[150:250, 1]
    expected = abs(9.0 - history.mean()) / history.std()
    assert rolling_z(x)[250] == np.float64(rolling_z(x)[250])
    assert abs(rolling_z(x)[250] - expected) < 1e-3 * expected


def test_rolling_z_has_no_score_before_ten_rows_of_history() -> None:
    assert np.isnan(rolling_z(np.arange(20.0))[:10]).all()


def test_rolling_z_score_alarms_on_a_spike_and_rarely_on_normal_rows() -> None:
    rng = np.random.default_rng(2)
    detector = RollingZScore().fit(rng.normal(size=(1000, 4)))
    test = rng.normal(size=(1000, 4))
    test[700, 2] = 15.0
    alert = detector.predict(test)
    assert alert[700] == 1
    assert alert.sum() < 40


def test_pca_limit_is_the_training_quantile_of_its_own_index() -> None:
    train = np.random.default_rng(3).normal(size=(2000, 6))
    detector = PcaT2Q().fit(train)
    assert np.mean(detector.score(train) > detector.limit) == np.float64(np.mean(detector.predict(train)))
    assert abs(np.mean(detector.predict(train)) - 0.01) < 0.002


def test_pca_flags_a_broken_correlation_that_each_channel_alone_would_pass() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(2000, 1))
    train = np.hstack([base, base + 0.05 * rng.normal(size=(2000, 1))])
    detector = PcaT2Q(components=1).fit(train)
    broken = train[:50].copy()
    broken[:, 1] = -broken[:, 0]
    assert detector.predict(broken)[np.abs(broken[:, 0]) > 0.5].mean() == 1.0


def test_pca_works_on_a_single_channel() -> None:
    rng = np.random.default_rng(5)
    detector = PcaT2Q().fit(rng.normal(size=(500, 1)))
    assert detector.predict(np.array([[0.0], [10.0]])).tolist() == [0, 1]
