"""A linear monitor beside the autoencoder: PCA's T² and Q over a window's newest steps join the channels' maximum,
calibrated on the same normal data, kept in the bundle, and scored the same way offline and live."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from ae_monitor.config import Config, config_from_dict
from ae_monitor.errors import BundleError, ConfigError
from ae_monitor.jobs.data import Signal, score_signal
from ae_monitor.jobs.train import fit_bundle
from ae_monitor.model.bundle import load_bundle, save_bundle
from ae_monitor.model.linear import LinearMonitor
from ae_monitor.scoring import group_scores, scorer_for

CHANNELS = ("a", "b", "c", "d")


def _config(**calibration: object) -> Config:
    return config_from_dict({
        "features": {"kind": "sensor", "sensor": {"window_samples": 10}},
        "model": {"kind": "dense", "hidden_units": [16], "latent_dim": 2},
        "training": {"epochs": 3, "batch_size": 64},
        "calibration": {"method": "quantile", "quantile": 0.99, "aggregation": "max", "recent_steps": 5,
                        "calibrate_on": "all", **calibration},
    })  # fmt: skip


def _signal(n: int = 600, seed: int = 0) -> Signal:
    """Four channels driven by one shared cycle: tightly correlated, as many plant sensors are."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    shared = np.sin(t / 9)[:, None] * np.array([1.0, 0.8, -0.6, 1.2])
    return Signal("normal", shared + 0.02 * rng.normal(size=(n, 4)), t, CHANNELS)


def test_t2_and_q_are_those_of_a_pca_fitted_on_the_same_rows() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    monitor = LinearMonitor.fit(rows, components=2)
    pca = PCA(n_components=2).fit(rows)
    test = rng.normal(size=(50, 5)) @ rng.normal(size=(5, 5))
    codes = pca.transform(test)
    t2, q = monitor.terms(test)
    assert t2 == pytest.approx((codes**2 / pca.explained_variance_).sum(axis=1), rel=1e-6)
    assert q == pytest.approx(((test - pca.inverse_transform(codes)) ** 2).sum(axis=1), rel=1e-6)


def test_a_vector_scores_its_terms_over_the_newest_steps_each_over_its_scale() -> None:
    rows = np.random.default_rng(1).normal(size=(300, 3))
    monitor = LinearMonitor.fit(rows, components=1).calibrated(np.array([[2.0, 4.0]]), quantile=0.99)
    data = np.random.default_rng(2).normal(size=(7, 6 * 3))
    t2, q = monitor.terms(data.reshape(7, 6, 3)[:, 4:, :].reshape(-1, 3))
    want = np.maximum(t2.reshape(7, 2).mean(axis=1) / 2.0, q.reshape(7, 2).mean(axis=1) / 4.0)
    assert monitor.score(data, (6, 3), 4) == pytest.approx(want)


def test_a_broken_correlation_alerts_although_each_channel_stays_in_its_normal_range() -> None:
    cfg = _config(linear_components=1, linear_terms=("q",))  # Q: the residual outside the usual movements
    bundle = fit_bundle(cfg, [_signal()], name="x", progress=False).bundle
    broken = _signal(300, seed=5)
    broken.samples[150:, 2] *= -1.0  # channel c now moves with the others instead of against them, same amplitude
    scored = score_signal(bundle, scorer_for(bundle), broken)
    scores = np.array([w.score for w in scored.windows])
    ends = np.array([w.end for w in scored.windows])
    assert (scores[ends > 170] > bundle.threshold).mean() > 0.9
    assert (scores[ends < 140] > bundle.threshold).mean() < 0.05


def test_the_window_score_is_the_larger_of_the_channels_and_the_monitors_terms() -> None:
    bundle = fit_bundle(_config(linear_components=2, linear_terms=("q",)), [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert bundle.calibration.group_scale is not None
    monitor = LinearMonitor.from_dict(bundle.calibration.linear or {})
    assert monitor.terms_used == ("q",)
    assert len(monitor.scales) == 1
    data = bundle.extractor.transform(_signal(120, seed=9).samples).data
    scores = scorer_for(bundle).score(data)
    channels = group_scores(scores.group_errors, 5, bundle.calibration.group_scale)
    assert scores.errors == pytest.approx(np.maximum(channels, monitor.score(data, (10, 4), 5)))


def test_the_monitor_travels_in_the_bundle_manifest_as_json(tmp_path: Path) -> None:
    bundle = fit_bundle(_config(linear_components=2), [_signal()], name="x", progress=False).bundle
    path = save_bundle(bundle, tmp_path / "b")
    record = json.loads((path / "manifest.json").read_text())["calibration"]["linear"]
    assert set(record) == {"mean", "components", "variances", "terms", "scales"}
    data = bundle.extractor.transform(_signal(80, seed=2).samples).data
    loaded = load_bundle(path)
    assert scorer_for(loaded).score(data).errors == pytest.approx(scorer_for(bundle).score(data).errors)


def test_a_monitor_for_other_channels_is_refused_at_load_naming_the_field(tmp_path: Path) -> None:
    bundle = fit_bundle(_config(linear_components=2), [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert bundle.calibration.linear is not None
    three = LinearMonitor.fit(np.random.default_rng(0).normal(size=(50, 3)), components=1)
    bad = replace(bundle.calibration, linear=three.calibrated(np.ones((1, 2)), quantile=0.5).to_dict())
    path = save_bundle(bundle.with_calibration(bad), tmp_path / "b")
    with pytest.raises(BundleError, match=r"calibration\.linear.*3 channels"):
        load_bundle(path)


def test_a_monitor_needs_the_max_aggregation_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="linear_components needs aggregation"):
        _config(linear_components=2, aggregation="mean")


def test_a_single_channel_gets_no_monitor() -> None:
    cfg = _config(linear_components=2)
    one = _signal()
    single = Signal("one", one.samples[:, :1], one.ts_s, ("a",))
    calibration = fit_bundle(cfg, [single], name="x", progress=False).bundle.calibration
    assert calibration is not None
    assert calibration.linear is None


# --- what an alert names: the channels that decided the score ------------------------------------------------------


def test_the_channel_parts_of_t2_and_of_q_add_up_to_the_terms() -> None:
    rows = _signal().samples
    monitor = LinearMonitor.fit(rows, components=1).calibrated(np.array([[1.0, 1.0]]), quantile=0.99)
    direction = np.asarray(monitor.components[0])
    along = np.asarray(monitor.mean) + 3.0 * direction  # T² only: every channel's part z_j p_j t / λ is positive
    t2, _ = monitor.terms(along[None, :])
    terms = monitor.vector_terms(along[None, :], (1, 4), 0)
    assert monitor.channel_terms(along[None, :], (1, 4), 0, terms).sum() == pytest.approx(t2[0])
    off = _signal(40, seed=3).samples.copy()
    off[:, 1] += 5.0  # a residual far outside the usual movements: Q is the larger term
    monitor_q = replace(monitor, terms_used=("q",), scales=(1.0,))
    _, q = monitor_q.terms(off)
    vectors = off.reshape(4, 40)
    parts = monitor_q.channel_terms(vectors, (10, 4), 0, monitor_q.vector_terms(vectors, (10, 4), 0))
    assert parts.sum(axis=1) == pytest.approx(q.reshape(4, 10).mean(axis=1))


def test_an_alert_names_the_channel_whose_scaled_error_decided_not_the_largest_raw_error() -> None:
    bundle = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert bundle.calibration.group_scale is not None
    scale = np.asarray(bundle.calibration.group_scale) * np.array([1.0, 1.0, 1.0, 100.0])  # d: a noisy channel
    bundle = replace(bundle, calibration=replace(bundle.calibration, group_scale=tuple(scale.tolist())))
    faulty = _signal(200, seed=4)
    faulty.samples[100:, 3] += 1.0  # a big raw error on d, small against d's scale
    faulty.samples[100:, 1] += 0.3  # a smaller one on b, large against b's
    scored = score_signal(bundle, scorer_for(bundle), faulty)
    flagged = [w for w in scored.windows if w.score > bundle.threshold]  # the windows an alert is about
    assert len(flagged) > 10
    assert all(int(np.argmax(w.contributions)) == 1 for w in flagged)  # b, although d's squared error is larger
    assert all(int(np.argmax(e)) == 3 for e in scored.scores.group_errors[[int(w.start) for w in flagged]])


def test_a_score_decided_by_the_linear_monitor_names_the_channels_that_moved_its_term() -> None:
    cfg = _config(linear_components=1, linear_terms=("q",))
    bundle = fit_bundle(cfg, [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    monitor = LinearMonitor.from_dict(bundle.calibration.linear or {})
    broken = _signal(300, seed=5)
    broken.samples[150:, 2] *= -1.0
    scorer = scorer_for(bundle)
    data = bundle.extractor.transform(broken.samples).data
    scores = scorer.score(data)
    decided = monitor.score(data, (10, 4), 5) >= scores.errors - 1e-12
    assert decided[-100:].mean() > 0.9  # the monitor decides the broken windows
    want = monitor.channel_terms(data[decided], (10, 4), 5, monitor.vector_terms(data[decided], (10, 4), 5))
    got = scores.share_basis[decided]
    shares = got / got.sum(axis=1, keepdims=True)
    assert shares == pytest.approx(want / want.sum(axis=1, keepdims=True))
