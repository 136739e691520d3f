"""Loading training/evaluation inputs as signals, splitting them, and scoring them in batch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ae_monitor.config import FeaturesConfig
from ae_monitor.errors import DataError
from ae_monitor.features import FeatureExtractor
from ae_monitor.features.logmel import LogMelExtractor, prepare_audio
from ae_monitor.features.sensor import SensorExtractor
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import Vectors
from ae_monitor.scoring import ScoredWindow, Scorer, VectorScores, aggregate, window_plan
from ae_monitor.sources.files import audio_label, read_audio, read_sensor_csv
from ae_monitor.sources.replay import list_inputs, stream_name

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Signal:
    """One input file ready for the features: mono audio (n,) or sensor values (n, C), with optional labels."""

    name: str
    samples: npt.NDArray[np.floating]
    ts_s: F64
    channels: tuple[str, ...]
    row_labels: npt.NDArray[np.int64] | None = None
    clip_label: int | None = None


def load_signals(paths: Sequence[str | Path], features: FeaturesConfig, *, rows: slice | None = None) -> list[Signal]:
    """Every file under `paths` as a Signal. `rows` selects sensor rows (or audio samples) of each file."""
    inputs = list_inputs(paths, features)
    if not inputs:
        raise DataError(f"no input files found under {', '.join(map(str, paths))}")
    names = input_names(inputs)
    signals = [_load(path, name, features, rows) for (path, _), name in zip(inputs, names, strict=True)]
    for signal, (path, _) in zip(signals, inputs, strict=True):
        if len(signal.samples) == 0:
            where = f" in rows {_rows_text(rows)}" if rows is not None else ""
            raise DataError(f"{path}: no data{where} (a header alone, or an empty selection)")
    return signals


def input_names(inputs: Sequence[tuple[Path, Path]]) -> list[str]:
    """The stream name of each input file: relative to its root (`valve1/0.csv` under `valve1` -> `0`) when one
    root is given; relative to the roots' common folder when several are (`valve1/0`, `valve2/0`), so files of
    different folders never merge into one stream."""
    roots = {root for _, root in inputs}
    if len(roots) <= 1:
        names = [stream_name(path, root) for path, root in inputs]
    else:
        absolute = [path.resolve() for path, _ in inputs]
        common = Path(os.path.commonpath([p.parent for p in absolute]))
        names = [p.relative_to(common).with_suffix("").as_posix() for p in absolute]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"the same file is given more than once: {', '.join(repeated)}")
    return names


def _rows_text(rows: slice) -> str:
    return f"{'' if rows.start is None else rows.start}:{'' if rows.stop is None else rows.stop}"


def _load(path: Path, name: str, features: FeaturesConfig, rows: slice | None) -> Signal:
    if features.kind == "sensor":
        table = read_sensor_csv(path, features.sensor, rows=rows)
        return Signal(name, table.values, table.ts_s, table.channels, table.labels)
    samples, rate = read_audio(path)
    mono = prepare_audio(samples, rate, features.logmel)[rows or slice(None)]
    ts = np.arange(len(mono), dtype=np.float64) / features.logmel.sample_rate_hz
    return Signal(name, mono, ts, (), None, audio_label(path))


def split_signals(
    signals: Sequence[Signal], *, validation_fraction: float, calibration_fraction: float
) -> tuple[list[Signal], list[Signal], list[Signal]]:
    """Split into train, validation and calibration parts, keeping time order (no window straddles two parts).

    With 10 or more files the split is by whole files (the last files validate and calibrate); with fewer, each
    file is cut in time: first the training part, then validation, then calibration.
    """
    if len(signals) >= 10:
        n_cal = round(len(signals) * calibration_fraction)
        n_val = round(len(signals) * validation_fraction)
        n_train = len(signals) - n_cal - n_val
        return list(signals[:n_train]), list(signals[n_train : n_train + n_val]), list(signals[n_train + n_val :])
    parts: tuple[list[Signal], list[Signal], list[Signal]] = ([], [], [])
    for signal in signals:
        n = len(signal.samples)
        cuts = [
            0,
            round(n * (1 - validation_fraction - calibration_fraction)),
            round(n * (1 - calibration_fraction)),
            n,
        ]
        for part, lo, hi in zip(parts, cuts[:-1], cuts[1:], strict=True):
            if hi > lo:
                part.append(_cut(signal, lo, hi))
    return parts


def _cut(signal: Signal, lo: int, hi: int) -> Signal:
    labels = None if signal.row_labels is None else signal.row_labels[lo:hi]
    return Signal(signal.name, signal.samples[lo:hi], signal.ts_s[lo:hi], signal.channels, labels, signal.clip_label)


def fit_extractor(features: FeaturesConfig, signals: Sequence[Signal]) -> FeatureExtractor:
    """The extractor, with sensor scaling (or log-mel band scaling) fitted on `signals` (the training part only)."""
    if features.kind == "logmel":
        return LogMelExtractor.fit(features.logmel, [s.samples for s in signals])
    channels = signals[0].channels
    for signal in signals:
        if signal.channels != channels:
            raise DataError(f"{signal.name} has channels {signal.channels}, the first file has {channels}")
    return SensorExtractor.fit(features.sensor, channels, [s.samples for s in signals])


def vectors_of(extractor: FeatureExtractor, signals: Sequence[Signal]) -> npt.NDArray[np.float32]:
    """All feature vectors of `signals`, stacked (shape (N, D); N may be 0)."""
    parts = [extractor.transform(s.samples).data for s in signals]
    dim = extractor.vector_shape[0] * extractor.vector_shape[1]
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


@dataclass(frozen=True)
class ScoredSignal:
    """A signal's vectors, their scores, and its windows as the streaming pipeline would emit them."""

    signal: Signal
    vectors: Vectors
    scores: VectorScores
    windows: list[ScoredWindow]

    @property
    def clip_score(self) -> float:
        """Mean vector score over the whole file (the DCASE clip score), formed as one window's score is (with the
        bundle's window statistic, if it has one)."""
        return self.scores.window_score(0, len(self.scores)) if len(self.scores) else float("nan")

    def window_end_s(self, end_sample: int) -> float:
        """One sample period after the window's last sample, as the streaming pipeline reports it."""
        return self.window_time_s(end_sample - 1) + _period(self.signal.ts_s)

    def window_time_s(self, sample: int) -> float:
        ts = self.signal.ts_s
        return float(ts[sample]) if sample < len(ts) else float(ts[-1]) + (sample - len(ts) + 1) * _period(ts)


def score_signal(bundle: Bundle, scorer: Scorer, signal: Signal, *, every_vector: bool = False) -> ScoredSignal:
    """Score `signal` as the pipeline would. `every_vector` starts a window at every vector instead of every hop:
    the same distribution of window scores, more (overlapping) samples, which calibration on short data needs."""
    vectors = bundle.extractor.transform(checked_channels(bundle, signal))
    scores = scorer.score(vectors.data)
    size, hop = window_plan(bundle.features)
    hop = 1 if every_vector else hop
    windows = aggregate(scores, vectors.first_sample, vectors.end_sample, size=size, hop=hop)
    return ScoredSignal(signal, vectors, scores, windows)


def checked_channels(bundle: Bundle, signal: Signal) -> npt.NDArray[np.floating]:
    if bundle.features.kind != "sensor" or signal.channels == bundle.extractor.group_names:
        return signal.samples
    missing = set(bundle.extractor.group_names) - set(signal.channels)
    if missing:
        raise DataError(f"{signal.name} lacks the bundle's channels {sorted(missing)}")
    return signal.samples[:, [signal.channels.index(c) for c in bundle.extractor.group_names]]


def _period(ts: F64) -> float:
    return float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0


def parse_rows(text: str | None) -> slice | None:
    """`'START:END'` (either side may be empty; START inclusive, END exclusive) as a slice; None stays None.

    >>> parse_rows("0:400"), parse_rows("400:")
    (slice(0, 400, None), slice(400, None, None))
    """
    if text is None:
        return None
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        rows = slice(int(start) if start else None, int(end) if end else None)
    except ValueError as exc:
        raise DataError(f"--rows must look like START:END (e.g. 0:400), got {text!r}") from exc
    if rows.start is not None and rows.stop is not None and rows.start >= rows.stop:
        raise DataError(f"--rows {text}: START must be less than END (rows START to END-1 are used)")
    return rows
