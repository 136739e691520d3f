"""Per-row (sensor) or per-clip (audio) scores with their labels: what `evaluate` and the benchmarks measure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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

    def alerts(self, threshold: float) -> npt.NDArray[np.int64]:
        return (np.nan_to_num(self.score, nan=-np.inf) > threshold).astype(np.int64)


def predictions_for(bundle: Bundle, scored: Sequence[ScoredSignal]) -> Predictions:
    if bundle.features.kind == "sensor":
        return row_predictions(scored)
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


def row_predictions(scored: Sequence[ScoredSignal]) -> Predictions:
    sources, index, scores, labels = [], [], [], []
    for item in scored:
        if item.signal.row_labels is None:
            raise DataError(f"{item.signal.name} has no `anomaly` column to evaluate against")
        n = len(item.signal.samples)
        row_score = np.full(n, np.nan)
        for window in item.windows:
            row_score[int(window.end) - 1] = window.score
        sources += [item.signal.name] * n
        index.append(np.arange(n))
        scores.append(row_score)
        labels.append(item.signal.row_labels)
    return Predictions(sources, np.concatenate(index), np.concatenate(scores), np.concatenate(labels))
