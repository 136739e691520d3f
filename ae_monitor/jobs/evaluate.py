"""`ae-monitor score` and `ae-monitor evaluate`: window scores for files, and detection quality on labelled data.

Labels: DCASE/MIMII file names (`normal_*`, `anomaly_*`, `*_abnormal`) for audio clips; an `anomaly` column for
sensor CSVs. A sensor row's score is the score of the window that ends at that row (what a live stream knows at
that moment); rows before the first full window have no score and never alert.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score

from ae_monitor.errors import DataError
from ae_monitor.jobs import dcase
from ae_monitor.jobs.data import ScoredSignal, Signal, checked_channels, load_signals, score_signal
from ae_monitor.jobs.predictions import Predictions, predictions_for, row_predictions, window_thresholds
from ae_monitor.model.bundle import Bundle
from ae_monitor.scoring import out_of_range, scorer_for

F64 = npt.NDArray[np.float64]

log = logging.getLogger(__name__)


def score_files(
    bundle: Bundle, paths: Sequence[str | Path], out: IO[str], *, fmt: str = "jsonl", rows: slice | None = None
) -> int:
    """Write one line per window of every file under `paths` to `out`; returns the number of windows.

    `start_row` and `end_row` are the window's rows (sensor) or samples (audio) of the file, start inclusive, end
    exclusive (of the selection, when `rows` starts from the end of the file)."""
    scorer = scorer_for(bundle)
    groups = bundle.extractor.group_names
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(["stream", "start_s", "end_s", "start_row", "end_row", "score", "threshold", "anomaly",
                         "surprise", *groups])  # fmt: skip
    count = 0
    short: list[str] = []
    for signal in load_signals(paths, bundle.features, rows=rows):
        warn_out_of_range(bundle, signal)
        scored = score_signal(bundle, scorer, signal)
        if not scored.windows:
            short.append(f"{signal.name} ({len(signal.samples)} {_unit(bundle)})")
        for row in _window_rows(bundle, scored, first_row=max(rows.start or 0, 0) if rows else 0):
            if writer is None:
                out.write(json.dumps(row) + "\n")
            else:
                writer.writerow([*list(row.values())[:-1], *row["contributions"].values()])
            count += 1
    too_short = f"shorter than one window of the bundle ({_window_text(bundle)}): {', '.join(short)}"
    if count == 0:
        raise DataError(f"no window to score: every input is {too_short}")
    if short:
        log.warning("not scored, %s", too_short)
    return count


def warn_out_of_range(bundle: Bundle, signal: Signal) -> None:
    """One warning per channel of `signal` that leaves the bundle's training range: its windows will score high
    because they are unlike training, which is not the same as a fault (SKAB's valve1 runs at z = -40 to -55)."""
    for found in out_of_range(bundle, checked_channels(bundle, signal)):
        log.warning("%s: %s", signal.name, found.message())


def _unit(bundle: Bundle) -> str:
    return "rows" if bundle.features.kind == "sensor" else "samples"


def _window_text(bundle: Bundle) -> str:
    if bundle.features.kind == "sensor":
        return f"{bundle.features.sensor.window_samples} rows"
    return f"{bundle.features.logmel.score_window_s:g} s of audio"


def _window_rows(bundle: Bundle, scored: ScoredSignal, *, first_row: int = 0) -> list[dict[str, Any]]:
    limits = window_thresholds(bundle, scored).tolist()
    cal = bundle.calibration
    scores = [w.score for w in scored.windows]
    surprises = [None] * len(scores) if cal is None else [round(v, 3) for v in cal.surprises(scores).tolist()]
    return [
        {
            "stream": scored.signal.name,
            "start_s": scored.window_time_s(int(w.start)),
            "end_s": scored.window_end_s(int(w.end)),
            "start_row": first_row + int(w.start),
            "end_row": first_row + int(w.end),
            "score": w.score,
            "threshold": limit,
            "anomaly": int(w.score > limit),
            "surprise": surprise,
            "contributions": dict(
                zip(bundle.extractor.group_names, (round(c, 6) for c in w.contributions), strict=True)
            ),
        }
        for w, limit, surprise in zip(scored.windows, limits, surprises, strict=True)
    ]


def detection_metrics(pred: Predictions, threshold: float) -> dict[str, float | int | None]:
    """AUC, DCASE pAUC (max FPR 0.1) and, at `threshold`, the SKAB counts and rates."""
    alert = pred.alerts(threshold)
    y = pred.label
    tp, fp = int(((alert == 1) & (y == 1)).sum()), int(((alert == 1) & (y == 0)).sum())
    fn, tn = int(((alert == 0) & (y == 1)).sum()), int(((alert == 0) & (y == 0)).sum())
    finite = np.isfinite(pred.score)
    both = len(set(y[finite].tolist())) == 2
    return {
        "auc": float(roc_auc_score(y[finite], pred.score[finite])) if both else None,
        "pauc": float(roc_auc_score(y[finite], pred.score[finite], max_fpr=0.1)) if both else None,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": tp / (tp + (fn + fp) / 2) if tp + fn + fp else None,
        "far": fp / (fp + tn) if fp + tn else None,
        "mar": fn / (fn + tp) if fn + tp else None,
        "threshold": threshold,
    }  # fmt: skip


def evaluate(
    bundle: Bundle,
    paths: Sequence[str | Path],
    report_dir: str | Path,
    *,
    rows: slice | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Score labelled data, write report.json, predictions.csv and (optionally) PNG plots to `report_dir`."""
    out = Path(report_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"the report folder {out} is an existing file; name a folder (it receives report.json, "
                        "predictions.csv and plots)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    scorer = scorer_for(bundle)
    paths = dcase.test_folders(paths) if bundle.features.kind == "logmel" else paths
    signals = load_signals(paths, bundle.features, rows=rows)
    for signal in signals:
        warn_out_of_range(bundle, signal)
    scored = [score_signal(bundle, scorer, s) for s in signals]
    pred = predictions_for(bundle, scored)
    report: dict[str, Any] = {
        "bundle": {"name": bundle.name, "version": bundle.version},
        "calibration": None if bundle.calibration is None else bundle.calibration.to_dict(),
        "overall": detection_metrics(pred, bundle.threshold),
        "files": {s.signal.name: _file_metrics(bundle, s) for s in scored},
    }
    from ae_monitor.jobs import reconstruction  # scikit-image is only needed here

    reconstruction.add_reconstruction_metrics(report, bundle, scored)
    if bundle.features.kind == "logmel":
        report["dcase"] = dcase.result_rows(dcase.clip_keys(paths, bundle.features), pred.label, pred.score)
        _write_rows(out / "dcase_result.csv", report["dcase"])
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _write_predictions(out / "predictions.csv", pred, bundle.threshold)
    if plots:
        from ae_monitor.jobs import plots as plotting  # matplotlib is only needed when plotting

        figures = plotting.evaluation_plots(out, pred, scored, bundle)
        figures += reconstruction.reconstruction_plots(out / "reconstruction", bundle, scored)
        report["plots"] = {p.stem: str(p) for p in figures}
    return report


def _file_metrics(bundle: Bundle, scored: ScoredSignal) -> dict[str, Any]:
    if bundle.features.kind != "sensor":
        return {"score": scored.clip_score, "label": scored.signal.clip_label}
    return detection_metrics(row_predictions([scored], bundle), bundle.threshold)


def _write_predictions(path: Path, pred: Predictions, threshold: float) -> None:
    alerts = pred.alerts(threshold)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "index", "score", "label", "alert"])
        for row in zip(pred.source, pred.index, pred.score, pred.label, alerts, strict=True):
            writer.writerow(
                [row[0], int(row[1]), "" if np.isnan(row[2]) else f"{row[2]:.6g}", int(row[3]), int(row[4])]
            )


def _write_rows(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
