"""Stage 3, sensor features: sliding windows over multivariate samples, scaled per channel.

Window k covers stream samples [k * hop, k * hop + window) (aligned to the stream's first sample) and becomes one
vector flattened row-major from (window_samples, n_channels). Each channel is scaled with statistics fitted on
training data: 'standard' subtracts the mean and divides by the standard deviation; 'minmax' maps the training range
to [0, 1] (for a BCE loss). A channel that is constant in training keeps scale 1.

With `differences = true` a vector holds the window_samples differences of consecutive scaled samples, so window k
needs window_samples + 1 samples: [k * hop, k * hop + window + 1).

Missing values (NaN or infinite) follow `nan_policy`: 'reject' raises RecordError(reason='nan_value') and leaves the
stream as it was; 'fill_previous' uses the channel's last valid value in this stream (the fitted mean before the
first); 'fill_mean' uses the fitted mean (0 after standard scaling).

    >>> import numpy as np
    >>> from ae_monitor.config import SensorConfig
    >>> cfg = SensorConfig(window_samples=4, hop_samples=2)
    >>> train = np.arange(20.0).reshape(10, 2)
    >>> extractor = SensorExtractor.fit(cfg, ("a", "b"), [train])
    >>> vectors = extractor.transform(train)
    >>> vectors.data.shape, vectors.first_sample.tolist(), vectors.end_sample.tolist()
    ((4, 8), [0, 2, 4, 6], [4, 6, 8, 10])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.config import SensorConfig
from ae_monitor.errors import DataError, RecordError
from ae_monitor.features import concat_vectors
from ae_monitor.records import Vectors

__all__ = ["SensorExtractor", "SensorStream", "push_many"]

F64 = npt.NDArray[np.float64]
# A training standard deviation (or range) at or below this fraction of the channel's magnitude counts as constant.
_CONSTANT_RTOL = 1e-9


class SensorExtractor:
    """Sensor windows over `channels`, in that order. `stats`: {'mean', 'std'} (standard) or {'min', 'max'}
    (minmax; an optional 'mean' is the NaN fill value, else the range's midpoint); None until fitted."""

    def __init__(
        self, cfg: SensorConfig, channels: Sequence[str], stats: Mapping[str, Sequence[float]] | None = None
    ) -> None:
        self.cfg = cfg
        self.channels = tuple(channels)
        self.vector_shape: tuple[int, int] = (cfg.window_samples, len(self.channels))
        self.group_names: tuple[str, ...] = self.channels
        self.sample_rate_hz: float = 1.0 / cfg.sample_period_s
        self.stats = None if stats is None else _check_stats(stats, cfg.scaling, len(self.channels))

    @classmethod
    def fit(cls, cfg: SensorConfig, channels: Sequence[str], arrays: Sequence[npt.NDArray[Any]]) -> SensorExtractor:
        """Fit the scaling on training arrays of shape (n, len(channels)); missing values are ignored."""
        data = _stack_training(arrays, len(channels))
        valid = np.isfinite(data)
        empty = [name for i, name in enumerate(channels) if not valid[:, i].any()]
        if empty:
            raise DataError(f"no valid training values in channel(s) {empty}")
        clean = np.where(valid, data, np.nan)
        stats = {"mean": np.nanmean(clean, axis=0).tolist()}
        if cfg.scaling == "standard":
            stats["std"] = np.nanstd(clean, axis=0).tolist()
        else:
            stats |= {"min": np.nanmin(clean, axis=0).tolist(), "max": np.nanmax(clean, axis=0).tolist()}
        return cls(cfg, channels, stats)

    @classmethod
    def from_manifest(cls, cfg: SensorConfig, manifest: Mapping[str, Any] | None) -> SensorExtractor:
        """Restore a `to_manifest()` result; without one, an unfitted extractor over `cfg.channels`."""
        if manifest is None:
            return cls(cfg, cfg.channels)
        if manifest.get("stats") is None:
            raise ValueError("the sensor feature manifest has no fitted scaling statistics")
        return cls(cfg, manifest["channels"], manifest["stats"])

    @property
    def fitted(self) -> bool:
        return self.stats is not None

    def stream(self) -> SensorStream:
        if self.stats is None:
            raise RuntimeError(
                "the sensor extractor has no scaling statistics: fit it on training data (SensorExtractor.fit) "
                "or load a trained model bundle"
            )
        return SensorStream(self)

    def transform(self, samples: npt.NDArray[Any]) -> Vectors:
        stream = self.stream()
        return concat_vectors([stream.push(samples), stream.flush()], self.vector_size)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": "sensor",
            "config": self.cfg.model_dump(mode="json"),
            "channels": list(self.channels),
            "stats": None if self.stats is None else {k: v.tolist() for k, v in self.stats.items()},
        }

    @property
    def vector_size(self) -> int:
        return self.vector_shape[0] * self.vector_shape[1]

    def scaling_arrays(self) -> tuple[F64, F64, F64]:
        """(offset, scale, fill): scaled = (raw - offset) / scale; `fill` is the fitted mean in raw units."""
        stats = self.stats
        if stats is None:
            raise RuntimeError("the sensor extractor is not fitted")
        if self.cfg.scaling == "standard":
            offset, spread = stats["mean"], stats["std"]
            fill = stats["mean"]
        else:
            offset, spread = stats["min"], stats["max"] - stats["min"]
            fill = stats.get("mean", (stats["min"] + stats["max"]) / 2)
        constant = spread <= _CONSTANT_RTOL * np.maximum(np.abs(offset), 1.0)
        return offset, np.where(constant, 1.0, spread), fill


def _check_stats(stats: Mapping[str, Sequence[float]], scaling: str, n_channels: int) -> dict[str, F64]:
    required = {"mean", "std"} if scaling == "standard" else {"min", "max"}
    missing = sorted(required - set(stats))
    if missing:
        raise ValueError(f"{scaling} scaling needs statistics {sorted(required)}; missing {missing}")
    arrays = {key: np.asarray(value, dtype=np.float64) for key, value in stats.items()}
    for key, value in arrays.items():
        if value.shape != (n_channels,) or not np.isfinite(value).all():
            raise ValueError(f"statistic {key!r} must hold {n_channels} finite values, got {value.tolist()}")
    return arrays


def _stack_training(arrays: Sequence[npt.NDArray[Any]], n_channels: int) -> F64:
    parts = [np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in arrays]
    bad = [part.shape for part in parts if part.shape[1] != n_channels]
    if bad:
        raise DataError(f"training arrays must have {n_channels} channels; got shapes {bad}")
    if not parts or sum(len(part) for part in parts) == 0:
        raise DataError("no training samples to fit the sensor scaling on")
    return np.concatenate(parts)


class SensorStream:
    """Incremental window state of one stream: the scaled samples not yet covered by an emitted window."""

    def __init__(self, extractor: SensorExtractor) -> None:
        self._ex = extractor
        cfg = extractor.cfg
        self._window, self._hop = cfg.window_samples, cfg.hop_samples
        self._span = self._window + int(cfg.differences)  # samples one window needs
        self._offset, self._scale, self._fill = extractor.scaling_arrays()
        self._reset()

    def _reset(self) -> None:
        self._n = 0  # samples pushed
        self._buf: F64 = np.zeros((0, len(self._ex.channels)), dtype=np.float64)  # scaled samples
        self._buf_start = 0  # stream index of _buf[0]
        self._next = 0  # index of the next window
        self._last = self._fill.copy()  # last valid raw value per channel, for 'fill_previous'

    def push(self, samples: npt.NDArray[Any]) -> Vectors:
        raw = self._as_matrix(samples)
        filled = self._fill_missing(raw)
        vectors, _ = push_many([self], filled, [len(filled)])
        return vectors

    def flush(self) -> Vectors:
        """Sensor windows need no end padding: a trailing partial window is dropped."""
        self._reset()
        return Vectors.empty(self._ex.vector_size)

    def _as_matrix(self, samples: npt.NDArray[Any]) -> F64:
        x = np.asarray(samples, dtype=np.float64)
        n_channels = len(self._ex.channels)
        if x.ndim == 1 and n_channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != n_channels:
            raise RecordError(
                f"expected samples of shape (n, {n_channels}) for channels {list(self._ex.channels)}, got {x.shape}",
                reason="shape",
            )
        return x

    def _fill_missing(self, raw: F64) -> F64:
        bad = ~np.isfinite(raw)
        if not bad.any():
            if len(raw):
                self._last = raw[-1].copy()
            return raw
        policy = self._ex.cfg.nan_policy
        if policy == "reject":
            row, col = np.argwhere(bad)[0]
            raise RecordError(
                f"channel {self._ex.channels[col]!r} has a missing value ({raw[row, col]}) at stream sample "
                f"{self._n + row}; features.sensor.nan_policy is 'reject'",
                reason="nan_value",
            )
        if policy == "fill_mean":
            return np.where(bad, self._fill, raw)
        return self._fill_previous(raw, bad)

    def _fill_previous(self, raw: F64, bad: npt.NDArray[np.bool_]) -> F64:
        # Row 0 of `extended` is the carried-over value; each cell takes the row of its channel's last valid value.
        extended = np.vstack([self._last, raw])
        rows = np.arange(len(extended))[:, None] * ~np.vstack([np.zeros_like(bad[:1]), bad])
        np.maximum.accumulate(rows, axis=0, out=rows)
        filled: F64 = extended[rows, np.arange(raw.shape[1])]
        self._last = filled[-1].copy()
        return filled[1:]

    def _take(self, scaled: F64, last_raw: F64) -> tuple[F64, int, int, int]:
        """Append scaled rows; returns (buffer, index in it of the first new window, windows now complete, stream
        index of that window's first sample), and drops what no later window needs."""
        shared = not len(self._buf)  # then `buf` is a view of the whole micro-batch
        buf = scaled if shared else np.concatenate((self._buf, scaled))
        self._n += len(scaled)
        self._last = last_raw.copy()
        start = self._next * self._hop
        available = self._buf_start + len(buf) - start
        count = (available - self._span) // self._hop + 1 if available >= self._span else 0
        local = start - self._buf_start
        self._next += count
        drop = min(self._next * self._hop - self._buf_start, len(buf))
        kept = buf[drop:]
        # A quiet stream must not keep the whole micro-batch alive through a view of it.
        self._buf, self._buf_start = (kept.copy() if shared else kept), self._buf_start + drop
        return buf, local, count, start


def push_many(streams: Sequence[SensorStream], raw: F64, counts: Sequence[int]) -> tuple[Vectors, list[int]]:
    """Push consecutive blocks of `raw` into streams of one extractor: stream k gets the next `counts[k]` rows,
    which must be finite (missing values are `SensorStream.push`'s job). Returns every new vector, stream by
    stream, and how many each stream made: the vectors `push` gives stream by stream, computed in one pass.

    The daemon's hot path: one call per micro-batch scales, windows and flattens the samples of hundreds of
    streams, instead of a dozen small numpy calls per stream."""
    first = streams[0]
    scaled = (raw - first._offset) / first._scale
    span, hop = first._span, first._hop
    bufs, offsets, locals_, made, starts = [], [], [], [], []
    row = offset = 0
    for stream, n in zip(streams, counts, strict=True):
        buf, local, count, start = stream._take(scaled[row : row + n], raw[row + n - 1] if n else stream._last)
        row += n
        bufs.append(buf)
        offsets.append(offset)
        offset += len(buf)
        locals_.append(local)
        made.append(count)
        starts.append(start)
    total = sum(made)
    if total == 0:
        return Vectors.empty(first._ex.vector_size), made
    made_arr = np.asarray(made)
    step = hop * (np.arange(total) - np.repeat(np.cumsum(made_arr) - made_arr, made_arr))
    begin = np.repeat(np.asarray(offsets) + np.asarray(locals_), made_arr) + step
    windows = np.concatenate(bufs)[begin[:, None] + np.arange(span)]  # (total, span, channels)
    if first._ex.cfg.differences:
        windows = np.diff(windows, axis=1)
    data = np.ascontiguousarray(windows, dtype=np.float32).reshape(total, -1)
    first_sample = np.repeat(np.asarray(starts, dtype=np.int64), made_arr) + step
    return Vectors(data, first_sample, first_sample + span), made
