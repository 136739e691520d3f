"""Per-row (sensor) or per-clip (audio) scores with their labels: what `evaluate` and the benchmarks measure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ae_monitor.config import CalibrationConfig
from ae_monitor.engine.slots import online_thresholds
from ae_monitor.errors import DataError
from ae_monitor.jobs.data import ScoredSignal
from ae_monitor.model.bundle import Bundle

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Predictions:
    """One row per clip (audio) or per input row (sensor)."""

    source: list[str]
    index: npt.NDArray[np.int64]
    score: F64
    label: npt.NDArray[np.int64]
    # Per row, the live threshold its window was judged against (calibration.online); NaN = the fixed one.
    threshold: F64 | None = None

    def alerts(self, threshold: float) -> npt.NDArray[np.int64]:
        limit = threshold if self.threshold is None else np.where(np.isnan(self.threshold), threshold, self.threshold)
        return (np.nan_to_num(self.score, nan=-np.inf) > limit).astype(np.int64)


def predictions_for(bundle: Bundle, scored: Sequence[ScoredSignal]) -> Predictions:
    if bundle.features.kind == "sensor":
        return row_predictions(scored, bundle)
    labels = [s.signal.clip_label for s in scored]
    if any(label is None for label in labels):
        unlabelled = [s.signal.name for s in scored if s.signal.clip_label is None][:3]
        raise DataError(f"cannot tell normal from anomalous clips by name, e.g. {unlabelled}")
    return Predictions(
        source=[s.signal.name for s in scored],
        index=np.zeros(len(scored), dtype=np.int64),
        score=np.asarray([s.clip_score for s in scored]),
        label=np.asarray(labels, dtype=np.int64),
    )


def row_predictions(scored: Sequence[ScoredSignal], bundle: Bundle | None = None) -> Predictions:
    """Per input row, the score of the window ending there; with `bundle`, also the live threshold it was judged
    against when the bundle's calibration asks for per-stream thresholds (each file is one stream)."""
    sources, index, scores, labels, limits = [], [], [], [], []
    for item in scored:
        if item.signal.row_labels is None:
            raise DataError(f"{item.signal.name} has no `anomaly` column to evaluate against")
        n = len(item.signal.samples)
        row_score, row_limit = np.full(n, np.nan), np.full(n, np.nan)
        ends = np.array([int(w.end) - 1 for w in item.windows], dtype=np.int64)
        row_score[ends] = [w.score for w in item.windows]
        if bundle is not None:
            row_limit[ends] = window_thresholds(bundle, item)
        sources += [item.signal.name] * n
        index.append(np.arange(n))
        scores.append(row_score)
        labels.append(item.signal.row_labels)
        limits.append(row_limit)
    return Predictions(sources, np.concatenate(index), np.concatenate(scores), np.concatenate(labels),
                       np.concatenate(limits) if bundle is not None else None)  # fmt: skip


def window_thresholds(bundle: Bundle, scored: ScoredSignal) -> F64:
    """The threshold each window of one file (one stream) is judged against, as serve would judge it: the bundle's
    fixed threshold, or the per-stream live thresholds its recorded calibration settings ask for."""
    settings = None if bundle.calibration is None else bundle.calibration.settings
    online = None if settings is None else online_thresholds(bundle, CalibrationConfig.model_validate(settings))
    scores = np.array([w.score for w in scored.windows], dtype=np.float64)
    if online is None:
        return np.full(len(scores), bundle.threshold)
    return online.judge([scored.signal.name] * len(scores), scores)
