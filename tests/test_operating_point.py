"""Operating points that hold on streams nobody tuned for: thresholds that track each stream's own normal level,
scores that cover a window's newest steps, and calibration over all normal windows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from ae_monitor.config import CalibrationConfig, Config, config_from_dict
from ae_monitor.errors import ConfigError
from ae_monitor.jobs.benchmark import alert_states
from ae_monitor.jobs.data import Signal, score_signal, split_signals
from ae_monitor.jobs.evaluate import score_files
from ae_monitor.jobs.train import fit_bundle
from ae_monitor.records import WindowScore
from ae_monitor.scoring import scorer_for
from ae_monitor.threshold import MIN_TRACKED, Calibration, TrackedThreshold, TrackedThresholds

CHANNELS = ("a", "b")


def _tracked(**kw: int) -> TrackedThreshold:
    return TrackedThreshold(threshold=3.0, reference=1.0, **{"windows": 20, "settle_windows": 0, **kw})


def test_a_tracked_threshold_starts_at_the_bundles_until_the_stream_has_history() -> None:
    tracked = _tracked()
    for _ in range(MIN_TRACKED - 1):
        tracked.update(2.0)
    assert tracked.threshold == 3.0
    tracked.update(2.0)
    assert tracked.threshold == pytest.approx(6.0)  # the stream's median is twice the calibration's


def test_a_tracked_threshold_never_drops_below_the_bundles() -> None:
    tracked = _tracked()
    for _ in range(50):
        tracked.update(0.1)
    assert tracked.threshold == 3.0


def test_a_stream_that_drifts_slowly_raises_its_bar_and_stops_alerting() -> None:
    tracked = _tracked()
    levels = np.linspace(1.0, 20.0, 400)  # the score creeps up to 20x the calibration median, 5% per step at most
    flagged = [tracked.update(float(v)) for v in levels]
    assert not any(flagged[-100:])
    assert tracked.threshold > 3.0 * 15


def test_a_fault_does_not_raise_its_own_bar() -> None:
    tracked = _tracked()
    for _ in range(20):
        tracked.update(1.0)
    assert all(tracked.update(10.0) for _ in range(200))
    assert tracked.threshold == pytest.approx(3.0)


def test_a_flagged_run_longer_than_the_settle_time_becomes_the_new_normal() -> None:
    tracked = _tracked(settle_windows=30)
    for _ in range(20):
        tracked.update(1.0)
    flagged = [tracked.update(10.0) for _ in range(100)]
    assert all(flagged[:30])
    assert not any(flagged[-20:])  # settled: the median of the accepted scores is now 10


def test_each_stream_tracks_its_own_level_and_forgotten_streams_start_again() -> None:
    cal = Calibration(threshold=3.0, method="quantile", parameters={}, n_samples=101, data_sha256="", created_at="",
                      reference_quantiles=tuple(np.linspace(0.0, 2.0, 101)))  # fmt: skip
    online = TrackedThresholds(cal, CalibrationConfig(online="track", track_windows=20))

    def window(stream: str, score: float) -> WindowScore:
        return WindowScore(stream, "b", 0.0, 1.0, score, 3.0, (1.0,))

    for _ in range(20):
        online(window("high", 2.5))
        online(window("low", 0.5))
    assert online.threshold("high") == pytest.approx(7.5)  # 3 x (median 2.5 / calibration median 1)
    assert online.threshold("low") == 3.0
    online.forget(["high"])
    assert online.threshold("high") == 3.0


def _config(**calibration: object) -> Config:
    return config_from_dict({
        "features": {"kind": "sensor", "sensor": {"window_samples": 10}},
        "model": {"kind": "dense", "hidden_units": [16], "latent_dim": 2},
        "training": {"epochs": 3, "batch_size": 64},
        "calibration": {"method": "quantile", "quantile": 0.99, **calibration},
    })  # fmt: skip


def _signal(n: int = 600, seed: int = 0) -> Signal:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    values = np.stack([np.sin(t / 7), 0.5 * np.cos(t / 5)], axis=1) + 0.05 * rng.normal(size=(n, 2))
    return Signal("normal", values, t, CHANNELS)


def test_recent_steps_score_only_the_newest_steps_of_each_window() -> None:
    bundle = fit_bundle(_config(recent_steps=3), [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert bundle.calibration.recent_steps == 3
    vectors = bundle.extractor.transform(_signal(80, seed=1).samples).data
    data = vectors.reshape(len(vectors), 10, 2)
    squared = (scorer_for(bundle).reconstruct(vectors).reshape(data.shape) - data) ** 2
    assert np.allclose(scorer_for(bundle).score(vectors).errors, squared[:, -3:, :].mean(axis=(1, 2)), rtol=1e-5)


def test_a_spike_alerts_at_once_and_resolves_with_the_newest_steps() -> None:
    spiked = _signal(300, seed=3)
    spiked.samples[200, 0] += 3.0
    ends = {}
    for recent in (0, 1):
        cfg = _config(recent_steps=recent)
        bundle = fit_bundle(cfg, [_signal()], name="x", progress=False).bundle
        _, alert = alert_states(bundle, cfg, score_signal(bundle, scorer_for(bundle), spiked))
        assert alert[200] == 1
        ends[recent] = int(np.flatnonzero(alert[200:] == 0)[0])
    assert ends[1] < ends[0]  # all-step windows keep alerting until the spike leaves the window


def test_recent_steps_longer_than_the_window_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"calibration\.recent_steps"):
        fit_bundle(_config(recent_steps=11), [_signal()], name="x", progress=False)


def test_calibrating_on_all_normal_windows_counts_every_window() -> None:
    cfg = _config(calibrate_on="all")
    bundle = fit_bundle(cfg, [_signal()], name="x", progress=False).bundle
    held_out = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    assert bundle.calibration is not None
    assert held_out.calibration is not None
    assert bundle.calibration.n_samples == 600 - 10 + 1
    _, _, tail = split_signals([_signal()], validation_fraction=0.1, calibration_fraction=0.1)
    assert held_out.calibration.n_samples == len(tail[0].samples) - 10 + 1


def test_the_offline_alerts_apply_the_same_tracked_thresholds_as_serve() -> None:
    cfg = _config(online="track", track_windows=20, track_settle_windows=50)
    bundle = fit_bundle(cfg, [_signal()], name="x", progress=False).bundle
    moved = _signal(600, seed=4)
    moved.samples[300:, 1] += 2.0  # the stream moves to an operating point the training data never saw, and stays
    scored = score_signal(bundle, scorer_for(bundle), moved)
    _, tracked_alert = alert_states(bundle, cfg, scored)
    _, fixed_alert = alert_states(bundle, _config(), scored)
    assert fixed_alert[300:320].all()
    assert tracked_alert[300:320].all()
    assert fixed_alert[-100:].all()  # a fixed threshold alerts for as long as the stream stays there
    # A tracked one takes the new level as normal after 50 windows. What still alerts there is the new level's own
    # cycle: its scores swing about 2x around their median, and the run that settles the level is accepted only
    # until the next window under the bar, so the bar follows the low half of the cycle (docs/calibration.md).
    assert tracked_alert[-200:].mean() < 0.5


def test_score_warns_once_per_channel_that_leaves_the_training_range(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    moved = _signal(100, seed=5).samples
    moved[:, 1] -= 60.0
    path = tmp_path / "moved.csv"
    path.write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in moved), encoding="utf-8")
    with caplog.at_level("WARNING", logger="ae_monitor.jobs.evaluate"):
        score_files(bundle, [path], io.StringIO())
    warnings = [r.getMessage() for r in caplog.records if r.name == "ae_monitor.jobs.evaluate"]
    assert len(warnings) == 1
    assert warnings[0].startswith("moved: b at z = -")
    assert "outside the range the model was trained on" in warnings[0]


def test_score_reports_the_tracked_threshold_each_window_was_judged_against(tmp_path: Path) -> None:
    bundle = fit_bundle(_config(online="track", track_windows=20), [_signal()], name="x", progress=False).bundle
    moved = _signal(400, seed=6).samples
    moved[:, 0] += 1.5
    path = tmp_path / "moved.csv"
    path.write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in moved), encoding="utf-8")
    out = io.StringIO()
    score_files(bundle, [path], out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    thresholds = [r["threshold"] for r in rows]
    assert thresholds[0] == pytest.approx(bundle.threshold)
    assert min(thresholds) >= bundle.threshold
    assert all(r["anomaly"] == int(r["score"] > r["threshold"]) for r in rows)


def test_score_lines_carry_the_calibrated_surprise(tmp_path: Path) -> None:
    bundle = fit_bundle(_config(), [_signal()], name="x", progress=False).bundle
    path = tmp_path / "normal.csv"
    path.write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in _signal(60, seed=7).samples), encoding="utf-8")
    out = io.StringIO()
    score_files(bundle, [path], out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert bundle.calibration is not None
    expected = bundle.calibration.surprises([r["score"] for r in rows])
    assert [r["surprise"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-3)
