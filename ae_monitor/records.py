"""Immutable values passed between the stages: records in, vectors, window scores, alerts and dead letters out.

Conventions used everywhere: sample and window ranges are start-inclusive, end-exclusive; times are epoch seconds
(float); a higher score means more anomalous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SensorRecord:
    """One or more multivariate samples of one stream. `values` has shape (n_samples, n_channels). `tags`: the
    record's routing fields (`[[routes]] field`), when asked for."""

    stream: str
    ts_s: FloatArray
    values: FloatArray
    channels: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AudioRecord:
    """A chunk of PCM audio of one stream. `samples` has shape (n,) or (n, n_channels), float in [-1, 1]."""

    stream: str
    ts_s: float
    samples: FloatArray
    sample_rate_hz: int
    tags: Mapping[str, str] = field(default_factory=dict)


Record = SensorRecord | AudioRecord


@dataclass(frozen=True)
class SampleRows:
    """Single-sample sensor records of any streams, columnar: row i is one record of stream `streams[i]`.

    The daemon's hot path: a Kafka poll of single-sample messages becomes one of these instead of thousands of
    SensorRecords. Every row has the same `channels`; `values` has shape (n, len(channels)), NaN where null;
    `tags` holds a column per routing field (None where a row has none)."""

    streams: list[str]
    ts_s: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    channels: tuple[str, ...]
    tags: Mapping[str, list[str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.streams)

    def tags_of(self, i: int) -> dict[str, str]:
        return {name: column[i] for name, column in self.tags.items() if column[i] is not None}  # type: ignore[misc]

    def record(self, i: int) -> SensorRecord:
        """Row `i` as the SensorRecord it was decoded from."""
        values = self.values[i : i + 1]
        return SensorRecord(self.streams[i], self.ts_s[i : i + 1], values, self.channels, self.tags_of(i))


@dataclass(frozen=True)
class Vectors:
    """Feature vectors of one stream, with the range of stream samples each one covers (end exclusive)."""

    data: npt.NDArray[np.float32]
    first_sample: IntArray
    end_sample: IntArray

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @staticmethod
    def empty(dim: int) -> Vectors:
        none = np.zeros(0, dtype=np.int64)
        return Vectors(np.zeros((0, dim), dtype=np.float32), none, none.copy())


@dataclass(frozen=True)
class WindowScore:
    """The score of one window of one stream, with each feature group's share of the reconstruction error."""

    stream: str
    bundle: str
    start_s: float
    end_s: float
    score: float
    threshold: float
    contributions: tuple[float, ...]
    surprise: float | None = None  # -log10 P(normal score >= score) under the bundle's calibration

    @property
    def anomalous(self) -> bool:
        return self.score > self.threshold


@dataclass(frozen=True)
class WindowTable:
    """Window scores of one bundle, columnar (the daemon makes hundreds of thousands per second): row i is
    `rows()[i]`. `shares` has one column per feature group (empty when the bundle names none)."""

    bundle: str
    streams: list[str]
    start_s: npt.NDArray[np.float64]
    end_s: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    threshold: npt.NDArray[np.float64]
    shares: npt.NDArray[np.float64]
    surprise: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.streams)

    def rows(self, start: int = 0, stop: int | None = None) -> list[WindowScore]:
        """Rows [start, stop) as WindowScore values."""
        cut = slice(start, stop)
        surprises = self.surprise[cut].tolist() if self.surprise is not None else [None] * len(self.streams[cut])
        return [
            WindowScore(stream, self.bundle, begin, end, score, threshold, tuple(shares), surprise)
            for stream, begin, end, score, threshold, shares, surprise in zip(
                self.streams[cut], self.start_s[cut].tolist(), self.end_s[cut].tolist(), self.score[cut].tolist(),
                self.threshold[cut].tolist(), self.shares[cut].tolist(), surprises, strict=True,
            )
        ]  # fmt: skip


AlertStatus = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Alert:
    """An alert event. `id` is deterministic (stream, first anomalous window start, bundle version)."""

    id: str
    status: AlertStatus
    stream: str
    bundle_name: str
    bundle_version: str
    event_time_s: float
    detection_time_s: float
    peak_score: float
    mean_score: float
    threshold: float
    severity: float
    tail_probability: float
    top_contributors: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    ends_at_s: float | None = None
    surprise: float | None = None  # -log10 of tail_probability, computed in log space (see threshold.py)


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, kept with the reason so nothing is silently lost."""

    source: str
    reason: str
    message: str
    payload: str | None = None


@dataclass(frozen=True)
class VectorCode:
    """The latent code of one feature vector (a sensor window, or one stacked log-mel vector of audio)."""

    stream: str
    bundle: str
    bundle_version: str
    start_s: float
    end_s: float
    code: tuple[float, ...]


@dataclass(frozen=True)
class CleanedWindow:
    """The model's reconstruction of one vector: denoised values (a denoising bundle's output).

    `values` maps each channel to its samples in the original units (sensors without first differences); otherwise
    `values` is empty and `vector` holds the reconstruction in feature units (scaled differences, or log-mel dB)."""

    stream: str
    bundle: str
    bundle_version: str
    start_s: float
    end_s: float
    values: dict[str, tuple[float, ...]]
    vector: tuple[float, ...] = ()
