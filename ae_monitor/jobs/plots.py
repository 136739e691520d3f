"""PNG figures people would rather look at than read: ROC, score histograms, score timelines per file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_curve

if TYPE_CHECKING:
    from ae_monitor.jobs.data import ScoredSignal
    from ae_monitor.jobs.predictions import Predictions
    from ae_monitor.model.bundle import Bundle


def evaluation_plots(out: Path, pred: Predictions, scored: Sequence[ScoredSignal], bundle: Bundle) -> list[Path]:
    """Write the evaluation figures under `out` and return their paths."""
    paths = [histogram(out / "score_histogram.png", pred, bundle.threshold)]
    finite = np.isfinite(pred.score)
    if len(set(pred.label[finite].tolist())) == 2:
        paths.append(roc(out / "roc.png", pred))
    if bundle.features.kind == "sensor":
        paths += [timeline(out / "timelines" / f"{s.signal.name}.png", s, bundle.threshold) for s in scored]
    return paths


def roc(path: Path, pred: Predictions) -> Path:
    finite = np.isfinite(pred.score)
    fpr, tpr, _ = roc_curve(pred.label[finite], pred.score[finite])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label="ae_monitor")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.axvline(0.1, color="tab:orange", linestyle=":", label="max FPR for pAUC")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def histogram(path: Path, pred: Predictions, threshold: float) -> Path:
    return _save(histogram_figure(pred, threshold), path)


def histogram_figure(pred: Predictions, threshold: float) -> Any:
    """Scores by label; on a log axis with log-spaced bins when the scores span more than two decades."""
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = np.isfinite(pred.score) & (pred.score > 0)
    values_all = pred.score[finite]
    logarithmic = len(values_all) > 1 and values_all.max() / values_all.min() > 100
    if logarithmic:
        bins = np.geomspace(values_all.min(), values_all.max(), 51).tolist()
        ax.set_xscale("log")
    else:
        bins = np.histogram_bin_edges(values_all, bins=50).tolist()
    for label, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        values = pred.score[finite & (pred.label == label)]
        if len(values):
            ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({len(values)})", color=color)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="score (log)" if logarithmic else "score", ylabel="windows", title="Scores by label")
    ax.legend()
    return fig


def timeline(path: Path, scored: ScoredSignal, threshold: float) -> Path:
    return _save(timeline_figure(scored, threshold), path)


def timeline_figure(scored: ScoredSignal, threshold: float) -> Any:
    """The benchmark's style: score on a log axis against time (window end), the threshold, windows above it
    marked, labelled anomalous segments shaded and named in the legend, the file in the title."""
    fig, ax = plt.subplots(figsize=(11, 3.5))
    times = _times([scored.window_end_s(int(w.end)) for w in scored.windows])
    scores = np.maximum(np.asarray([w.score for w in scored.windows], dtype=np.float64), 1e-12)
    _shade(ax, scored.signal.row_labels, _times(scored.signal.ts_s.tolist()))
    ax.plot(times, scores, lw=0.8, label="score")
    ax.axhline(threshold, color="black", linestyle="--", lw=0.8, label=f"threshold {threshold:.4g}")
    alerted = scores > threshold
    ax.scatter(times[alerted], scores[alerted], s=4, color="tab:red", label="above threshold", zorder=3)
    ax.set_yscale("log")
    epoch = len(times) > 0 and np.issubdtype(times.dtype, np.datetime64)
    ax.set(xlabel="time (UTC)" if epoch else "time (s)", ylabel="score (log)", title=scored.signal.name)
    ax.legend(loc="upper left", fontsize="small", ncol=4)
    return fig


def _times(seconds: Sequence[float]) -> npt.NDArray[Any]:
    """Epoch seconds as datetimes (the axis shows dates); small values (audio, or CSVs without a time column)
    stay seconds from the start."""
    values = np.asarray(seconds, dtype=np.float64)
    if len(values) and values.min() > 1e8:  # after 1973: a real clock
        return (values * 1e3).astype("datetime64[ms]")
    return values


def _shade(ax: Any, labels: npt.NDArray[Any] | None, x: npt.NDArray[Any] | None = None) -> None:
    """Shade each labelled anomalous segment (rows, or `x` at those rows), naming them once in the legend."""
    if labels is None or not labels.any():
        return
    edges = np.diff(np.concatenate([[0], labels.astype(int), [0]]))
    for i, (start, stop) in enumerate(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)):
        lo, hi = (start, stop) if x is None else (x[int(start)], x[min(int(stop), len(x) - 1)])
        ax.axvspan(lo, hi, color="tab:orange", alpha=0.2, lw=0, label="labelled anomaly" if i == 0 else None)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def benchmark_timeline(
    path: Path, scored: ScoredSignal, threshold: float, rows: npt.NDArray[Any], alert: npt.NDArray[Any]
) -> Path:
    """One benchmark file: score (log scale) with the threshold, alert state per test row, labelled rows shaded."""
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ends = np.asarray([int(w.end) - 1 for w in scored.windows], dtype=np.int64)
    scores = np.maximum(np.asarray([w.score for w in scored.windows]), 1e-12)
    _shade(ax, scored.signal.row_labels)
    ax.plot(ends, scores, lw=0.8, label="score")
    ax.axhline(threshold, color="black", linestyle="--", lw=0.8, label="threshold")
    if len(rows):
        ax.axvline(rows[0], color="grey", lw=0.8, linestyle=":", label="train | test")
    firing = rows[alert == 1]
    ax.scatter(firing, np.full(len(firing), threshold), s=6, marker="|", color="tab:red", label="alert", zorder=3)
    ax.set_yscale("log")
    ax.set(xlabel="row", ylabel="score (log)", title=f"{scored.signal.name}  (shaded: labelled anomaly)")
    ax.legend(loc="upper left", fontsize="small", ncol=4)
    return _save(fig, path)


def leaderboard(path: Path, rows: Sequence[tuple[str, float, float, float]]) -> Path:
    """F1, FAR and MAR of every algorithm side by side; this run's rows in colour, the published ones in grey."""
    names = [row[0] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.42 * len(rows) + 1.4), sharey=True)
    colors = ["tab:blue" if "ae_monitor" in n else "tab:orange" if "this run" in n else "lightgrey" for n in names]
    for ax, column, title in zip(axes, (1, 2, 3), ("F1 (higher is better)", "FAR % (lower)", "MAR % (lower)"),
                                 strict=True):  # fmt: skip
        values = [float(row[column]) for row in rows]
        ax.barh(names, values, color=colors)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.2f}", va="center", fontsize="small")
        ax.set_title(title)
        ax.set_xlim(0, max(values) * 1.25)
    axes[0].invert_yaxis()
    fig.suptitle("SKAB outlier detection (grey: published; colour: computed in this run)")
    return _save(fig, path)
