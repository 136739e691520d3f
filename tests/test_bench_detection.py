"""The detection benchmark: metrics at each detector's own threshold, and a small slice of the real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ae_monitor.config import config_from_dict, load_config
from ae_monitor.jobs import suite

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "features": {"kind": "sensor", "sensor": {"window_samples": 10}},
    "model": {"kind": "conv1d", "conv_channels": [8, 4], "latent_dim": 4},
    "training": {"epochs": 3, "batch_size": 128},
    "calibration": {"method": "target", "target_false_alerts_per_1000_windows": 5.0, "folds": 2, "aggregation": "max"},
}


def test_segments_are_the_runs_of_ones() -> None:
    assert suite.segments(np.array([1, 1, 0, 0, 1, 0, 1, 1])) == [(0, 2), (4, 5), (6, 8)]


def test_part_metrics_count_points_events_and_delays_without_point_adjustment() -> None:
    label = np.array([0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    alert = np.array([0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    m = suite.part_metrics(suite.Prediction(np.arange(12.0), alert), label)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 4, 4)
    assert (m["events"], m["events_detected"], m["delays"]) == (2, 1, [2])


def test_summary_pools_counts_and_reports_false_alerts_per_1000_normal_rows() -> None:
    label = np.array([0] * 8 + [1] * 2)
    part = suite.part_metrics(suite.Prediction(np.arange(10.0), np.array([1] + [0] * 7 + [1, 1])), label)
    s = suite.summary([part, part])
    assert s["false_alerts_per_1000"] == pytest.approx(125.0)
    assert s["f1"] == pytest.approx(4 / (4 + 1))
    assert s["event_recall"] == 1.0
    assert s["auc"] == 1.0


def test_the_committed_gutentag_suite_has_the_series_the_issue_asks_for() -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "benchmarks" / "gutentag.yaml").read_text(encoding="utf-8"))
    series = doc["timeseries"]
    uni = [s for s in series if s["channels"] == 1]
    multi = [s for s in series if 5 <= s["channels"] <= 40]
    kinds = {k["kind"] for s in series for a in s["anomalies"] for k in a["kinds"]}
    bases = {s["base-oscillation"]["kind"] for s in series}
    assert len(uni) >= 40
    assert len(multi) >= 20
    assert len(uni) + len(multi) == len(series)
    assert all(s["semi-supervised"] for s in series)
    assert kinds == {"extremum", "frequency", "mean", "pattern", "pattern-shift", "platform", "trend", "variance",
                     "amplitude", "mode-correlation"}  # fmt: skip
    assert {"sine", "ecg", "random-walk", "cylinder-bell-funnel", "polynomial"} <= bases
    assert isinstance(doc["seed"], int)


def test_a_small_slice_runs_every_detector_and_writes_the_reports(tmp_path: Path) -> None:
    cases = suite.demo_cases(train_s=600)
    res = suite.run_suite(config_from_dict(FAST), cases, tmp_path, plots=False)
    by = res["suites"]["demo"]
    for detector in suite.DETECTORS:
        assert 0.0 <= by[detector]["f1"] <= 1.0
        assert by[detector]["events"] == 2  # two faulty pumps, one fault each
    assert by["ae_monitor"]["auc"] > 0.5
    assert json.loads((tmp_path / "results.json").read_text())["suites"] == res["suites"]
    assert "| demo (1 cases) | ae_monitor |" in (tmp_path / "results.md").read_text()


def test_the_gutentag_suite_is_generated_from_the_committed_yaml() -> None:
    pytest.importorskip("gutenTAG", reason="GutenTAG is in the `bench` extra (make bench-detection installs it)")
    names = ["uni-01-sine-plain-amplitude", "multi-00-sine-5ch"]
    cases = suite.gutentag_cases(ROOT / "benchmarks" / "gutentag.yaml", only=names)
    assert [(c.suite, len(c.channels), c.kind) for c in cases] == [
        ("gutentag-univariate", 1, "amplitude"), ("gutentag-multivariate", 5, cases[1].kind)]  # fmt: skip
    assert all(c.parts[0].label.sum() > 0 and len(c.train) == len(c.parts[0].values) for c in cases)


def test_the_shipped_configuration_beats_both_baselines_on_the_demo_pumps(tmp_path: Path) -> None:
    # The CI slice of the goal (the full benchmark runs in `make bench-detection`): the demo suite, shipped config.
    shipped = load_config(ROOT / "configs" / "sensor-skab.toml")
    by = suite.run_suite(shipped, suite.demo_cases(), tmp_path, plots=False)["suites"]["demo"]
    ae, baselines = by["ae_monitor"], [by["zscore"], by["pca"]]
    assert all(ae["f1"] > b["f1"] for b in baselines)
    assert ae["event_recall"] == 1.0
    assert ae["false_alerts_per_1000"] <= min(b["false_alerts_per_1000"] for b in baselines)


def test_the_learned_mode_trains_each_stream_on_its_own_first_rows_and_never_alerts_on_them() -> None:
    cases = suite.demo_cases(train_s=600)
    outcome = suite.run_case(config_from_dict(FAST), cases[0], ["ae_monitor_learned"])
    for part, prediction in zip(cases[0].parts, outcome.predictions["ae_monitor_learned"], strict=True):
        assert len(prediction.alert) == len(part.values)
        assert not prediction.alert[: suite.PROBATION_ROWS].any()
        assert np.isfinite(prediction.score[suite.PROBATION_ROWS :]).all()
    faulty = outcome.predictions["ae_monitor_learned"][1]  # pump-2: its vibration decouples from 500 s to 800 s
    assert faulty.alert[500:800].mean() > faulty.alert[200:500].mean()
