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
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = np.isfinite(pred.score)
    bins = np.histogram_bin_edges(pred.score[finite], bins=50).tolist()
    for label, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        values = pred.score[finite & (pred.label == label)]
        if len(values):
            ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({len(values)})", color=color)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="score", ylabel="count", title="Scores by label")
    ax.legend()
    return _save(fig, path)


def timeline(path: Path, scored: ScoredSignal, threshold: float) -> Path:
    """Score over time with the threshold, alerted windows marked and labelled anomalous rows shaded."""
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ends = np.asarray([int(w.end) - 1 for w in scored.windows], dtype=np.int64)
    scores = np.asarray([w.score for w in scored.windows])
    ax.plot(ends, scores, lw=0.8, label="score")
    ax.axhline(threshold, color="black", linestyle="--", lw=0.8, label="threshold")
    alerted = scores > threshold
    ax.scatter(ends[alerted], scores[alerted], s=4, color="tab:red", label="alert", zorder=3)
    _shade(ax, scored.signal.row_labels)
    ax.set(xlabel="row", ylabel="score", title=scored.signal.name)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def _shade(ax: Any, labels: npt.NDArray[Any] | None) -> None:
    if labels is None or not labels.any():
        return
    edges = np.diff(np.concatenate([[0], labels.astype(int), [0]]))
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        ax.axvspan(start, stop, color="tab:orange", alpha=0.2, lw=0)


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
