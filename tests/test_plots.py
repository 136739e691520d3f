"""evaluate's figures: timelines in the benchmark's style, histograms readable when scores span decades."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ae_monitor.jobs.data import load_signals, score_signal
from ae_monitor.jobs.plots import histogram_figure, timeline_figure
from ae_monitor.jobs.predictions import Predictions
from ae_monitor.model.bundle import load_bundle
from ae_monitor.scoring import scorer_for


def test_a_timeline_has_a_log_score_axis_time_on_x_and_names_the_labelled_segments(
    sensor_bundle: Path, sensor_data: tuple[Path, Path]
) -> None:
    bundle = load_bundle(sensor_bundle)
    (signal,) = load_signals([sensor_data[1] / "pump-2.csv"], bundle.features)
    fig = timeline_figure(score_signal(bundle, scorer_for(bundle), signal), bundle.threshold)
    ax = fig.axes[0]
    try:
        assert ax.get_yscale() == "log"
        assert ax.get_xlabel() == "time (UTC)"
        assert ax.get_title() == "pump-2"
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "labelled anomaly" in labels
        assert any(label.startswith("threshold ") for label in labels)
    finally:
        plt.close(fig)


def test_a_histogram_of_scores_spanning_decades_uses_a_log_axis() -> None:
    scores = np.concatenate([np.full(50, 1e-3), np.full(5, 10.0)])
    labels = np.concatenate([np.zeros(50, dtype=np.int64), np.ones(5, dtype=np.int64)])
    pred = Predictions(source=["a"] * 55, index=np.arange(55), score=scores, label=labels)
    fig = histogram_figure(pred, threshold=0.5)
    try:
        assert fig.axes[0].get_xscale() == "log"
    finally:
        plt.close(fig)
