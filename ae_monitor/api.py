"""The Python API: train, score, save, load and stream from a notebook or a program (docs/python-api.md).

    detector = ae_monitor.train(normal, config={...})      # numpy arrays, DataFrames or file paths
    scores = detector.score(recent)                        # per-window scores, thresholds, flags, contributions
    detector.save("bundles/pump"); ae_monitor.load("bundles/pump")
    result = detector.stream(records)                      # the streaming engine in-process: windows and alerts

Arrays are sensor values of shape (n_samples, n_channels) or mono audio of shape (n_samples,) at the config's
`features.logmel.sample_rate_hz`; a DataFrame's columns name the channels. Training goes through the same code as
`ae-monitor train` (jobs/train.py, which reads files), so arrays are written to a temporary folder first.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig, Config, FeaturesConfig, config_from_dict, load_config
from ae_monitor.engine import Engine
from ae_monitor.errors import ConfigError, DataError
from ae_monitor.jobs.data import Signal, load_signals, score_signal
from ae_monitor.jobs.train import train_bundle
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, load_bundle, save_bundle
from ae_monitor.records import Alert, DeadLetter, Record, SampleRows, WindowScore
from ae_monitor.scoring import scorer_for
from ae_monitor.serve.offline import Runner
from ae_monitor.serve.outputs import Outputs
from ae_monitor.sinks.memory import MemorySink

F64 = npt.NDArray[np.float64]
# What `train` and `score` take: one array or DataFrame, a list of them (separate recordings), or file paths.
Data = Any


@dataclass(frozen=True)
class Scores:
    """Per-window results of `Detector.score`, one row per window, in order.

    `start` and `end` are sample (row) indices of the input, start inclusive, end exclusive; a row is anomalous
    when its score is above the threshold; `contributions` has one column per channel (or mel band), each row
    summing to 1: the share of the window's reconstruction error that channel carries.
    """

    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    score: F64
    threshold: float
    contributions: F64
    channels: tuple[str, ...]

    @property
    def anomalous(self) -> npt.NDArray[np.bool_]:
        return self.score > self.threshold

    def __len__(self) -> int:
        return len(self.score)


@dataclass(frozen=True)
class StreamResult:
    """What `Detector.stream` produced: every window score, alert event and dead letter, in order."""

    windows: list[WindowScore]
    alerts: list[Alert]
    dead_letters: list[DeadLetter]


class Detector:
    """A trained and calibrated model bundle, ready to score arrays or stream records."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    @property
    def channels(self) -> tuple[str, ...]:
        """The channel (or mel band) names, in the order of `Scores.contributions`' columns."""
        return tuple(self.bundle.extractor.group_names)

    def score(self, data: Data, *, channels: Sequence[str] | None = None) -> Scores:
        """Score one recording, window by window, as `ae-monitor score` would: an array or DataFrame, or the path
        of one file. `channels` names the columns of a plain sensor array (default: the bundle's, in order)."""
        signal = _signal(data, self.bundle.features, channels or self._input_channels())
        scored = score_signal(self.bundle, scorer_for(self.bundle), signal)
        n_groups = len(self.channels)
        windows = scored.windows
        return Scores(
            start=np.asarray([w.start for w in windows], dtype=np.int64),
            end=np.asarray([w.end for w in windows], dtype=np.int64),
            score=np.asarray([w.score for w in windows], dtype=np.float64),
            threshold=self.threshold,
            contributions=np.asarray([w.contributions for w in windows], dtype=np.float64).reshape(-1, n_groups),
            channels=self.channels,
        )

    def stream(
        self,
        records: Iterable[Record | SampleRows],
        *,
        alerting: AlertingConfig | Mapping[str, Any] | None = None,
        batch_records: int = 256,
        max_gap_s: float = 10.0,
    ) -> StreamResult:
        """Run the streaming engine in-process over `records` (SensorRecord / AudioRecord / SampleRows), in
        micro-batches of `batch_records`, as `serve` and `replay` do; `alerting` is the `[alerting]` config."""
        policy = _alerting(alerting)
        alerts: MemorySink[Alert] = MemorySink()
        dead: MemorySink[DeadLetter] = MemorySink()
        metrics = Metrics(CollectorRegistry())
        engine = Engine(self.bundle, alerting=policy, metrics=metrics, max_gap_s=max_gap_s)
        runner = Runner(engine, Outputs(alerts=alerts, dead_letters=dead), metrics)
        windows: list[WindowScore] = []
        batch: list[Record | SampleRows] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_records:
                windows += runner.process(batch)
                batch = []
        if batch:
            windows += runner.process(batch)
        windows += runner.flush()
        return StreamResult(windows, list(alerts.items), list(dead.items))

    def save(self, path: str | Path) -> Path:
        """Write the bundle (weights, fitted features, threshold) to the directory `path`, atomically."""
        return save_bundle(self.bundle, path)

    def _input_channels(self) -> tuple[str, ...]:
        return self.channels if self.bundle.features.kind == "sensor" else ()

    def __repr__(self) -> str:
        return f"Detector({self.bundle.name!r}, version {self.bundle.version}, threshold {self.threshold:.4g})"


def train(
    data: Data,
    config: Config | Mapping[str, Any] | str | Path,
    *,
    channels: Sequence[str] | None = None,
    name: str = "detector",
    out: str | Path | None = None,
) -> Detector:
    """Train and calibrate a detector on normal data, as `ae-monitor train` does.

    `data`: an array or DataFrame, a list of them (separate recordings: no window spans two), or file and folder
    paths. `config`: a Config, the same sections as a TOML file as a dict, or a TOML path. `channels` names the
    columns of plain arrays (default `x0`, `x1`, ...). The bundle is written to `out` when given.
    """
    cfg = _config(config)
    with tempfile.TemporaryDirectory(prefix="ae-monitor-") as tmp:
        paths = data if _are_paths(data) else _write_inputs(data, cfg.features, channels, Path(tmp) / "data")
        report = train_bundle(cfg, paths, out or Path(tmp) / "bundle", name=name, progress=False)
    return Detector(report.bundle)


def load(path: str | Path) -> Detector:
    """The detector whose bundle is at `path` (verified as `serve` would)."""
    return Detector(load_bundle(path))


def _config(config: Config | Mapping[str, Any] | str | Path) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, str | Path):
        return load_config(config)
    return config_from_dict(config)


def _alerting(alerting: AlertingConfig | Mapping[str, Any] | None) -> AlertingConfig:
    if alerting is None or isinstance(alerting, AlertingConfig):
        return alerting or AlertingConfig()
    return config_from_dict({"alerting": dict(alerting)}).alerting


def _are_paths(data: Data) -> bool:
    items = data if isinstance(data, list | tuple) else [data]
    return bool(items) and all(isinstance(item, str | Path) for item in items)


def _table(item: Any, channels: Sequence[str] | None) -> tuple[npt.NDArray[np.float64], tuple[str, ...]]:
    """(values, channel names) of an array or a DataFrame (anything with `columns` and `to_numpy`)."""
    if hasattr(item, "columns") and hasattr(item, "to_numpy"):
        return np.asarray(item.to_numpy(), dtype=np.float64), tuple(str(c) for c in item.columns)
    values = np.asarray(item, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise DataError(f"sensor data must have shape (n_samples, n_channels), got {values.shape}")
    names = tuple(channels) if channels else tuple(f"x{i}" for i in range(values.shape[1]))
    if len(names) != values.shape[1]:
        raise DataError(f"{len(names)} channel names for {values.shape[1]} columns")
    return values, names


def _signal(data: Data, features: FeaturesConfig, channels: Sequence[str]) -> Signal:
    """One recording (an array, a DataFrame or a file path) as the Signal the jobs score."""
    if isinstance(data, str | Path):
        signals = load_signals([data], features)
        if len(signals) != 1:
            raise DataError(f"score takes one recording; {data} holds {len(signals)} files")
        return signals[0]
    if features.kind == "sensor":
        values, names = _table(data, channels)
        ts = np.arange(len(values), dtype=np.float64) * features.sensor.sample_period_s
        return Signal("input", values, ts, names)
    mono = np.asarray(data, dtype=np.float32)
    if mono.ndim != 1:
        raise DataError(f"audio must be mono, shape (n_samples,), got {mono.shape}")
    return Signal("input", mono, np.arange(len(mono), dtype=np.float64) / features.logmel.sample_rate_hz, ())


def _write_inputs(data: Data, features: FeaturesConfig, channels: Sequence[str] | None, folder: Path) -> list[Path]:
    """Arrays as the files `train_bundle` reads: CSVs (full float precision) or float WAVs (lossless)."""
    folder.mkdir(parents=True)
    items = data if isinstance(data, list | tuple) else [data]
    if not items:
        raise DataError("no training data given")
    for i, item in enumerate(items):
        if features.kind == "sensor":
            values, names = _table(item, channels)
            with (folder / f"input-{i:04d}.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(names)
                writer.writerows([repr(float(v)) for v in row] for row in values)
        else:
            import soundfile

            soundfile.write(folder / f"input-{i:04d}.wav", np.asarray(item, dtype=np.float32),
                            features.logmel.sample_rate_hz, subtype="FLOAT")  # fmt: skip
    return [folder]


__all__ = ["ConfigError", "DataError", "Detector", "Scores", "StreamResult", "load", "train"]
