"""Stage 3, the stream clock: which event time each stream sample index stands for, per feature kind.

A feature stream counts samples (`Vectors.first_sample` / `end_sample`); alerts and scores speak in epoch seconds.
Each feature kind has its own clock, because records carry time differently:

- **sensor** records stamp every sample (`ts_s` is an array), so the clock keeps the recent stamps and looks
  window starts up; samples not newer than the newest one seen are late, one by one;
- **audio** chunks stamp only their first sample (`ts_s` is a float): sample i of a stream is `origin + i / rate`;
  a chunk that starts before where the stream already is (less a tolerance) is late as a whole.

Consecutive records of a stream that `continue` each other are pushed to the features as one block (one call per
stream and micro-batch instead of one per record); each clock says when its records do.

Adding a feature kind means adding an extractor and a clock, and naming the clock in `clock_factory`. A clock
starts afresh with its stream (a restart after a gap makes a new one).

    >>> import numpy as np
    >>> clock = SensorClock(sample_period_s=1.0, keep_samples=8)
    >>> clock.advance(np.array([100.0, 101.0, 102.0]))
    >>> clock.time_of(1), clock.end_of(3), clock.samples
    (101.0, 103.0, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from ae_monitor.config import FeaturesConfig

__all__ = ["AudioClock", "SensorClock", "Stamp", "StreamClock", "clock_factory"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Stamp = F64 | float  # a sensor record's per-sample times, or an audio chunk's start time


class StreamClock(Protocol):
    """Sample index <-> event time of one stream since its last restart. Never blocks; no I/O."""

    stamps_each_sample: ClassVar[bool]  # records carry one time per sample (consecutive records can be joined)
    samples: int  # samples taken since the stream (re)started
    last_ts_s: float  # event time of the newest sample (-inf before the first)

    def fresh(self, stamp: Stamp, count: int, *, tolerance_s: float) -> npt.NDArray[np.bool_] | None:
        """Which of `count` samples stamped `stamp` are newer than the stream (None: all of them)."""
        ...

    def span(self, stamp: Stamp, count: int) -> tuple[float, float]:
        """Event times of the first and the last of `count` samples stamped `stamp`."""
        ...

    def continues(self, last: Stamp, last_count: int, stamp: Stamp, *, max_gap_s: float) -> bool:
        """Whether a record stamped `stamp` follows the record (`last`, `last_count` samples) with no sample between,
        no restart-sized gap and nothing late: then both can be pushed as one block, as if one record."""
        ...

    def join(self, stamps: Sequence[Stamp]) -> Stamp:
        """The stamp of a block of consecutive records (each continuing the one before) stamped `stamps`."""
        ...

    def advance(self, stamp: Stamp, count: int | None = None) -> None:
        """Take `count` samples stamped `stamp` (sensor: one stamp per sample, count implied)."""
        ...

    def time_of(self, sample: int) -> float:
        """Epoch seconds of a sample index; past the newest known sample it extrapolates."""
        ...

    def end_of(self, end_sample: int) -> float:
        """A window's end: the time just after its last sample (`end_sample` is exclusive)."""
        ...

    def trim(self) -> None:
        """Forget what no future window can need."""
        ...

    @classmethod
    def vector_times(cls, clocks: Sequence[StreamClock], counts: I64, first: I64, end: I64) -> tuple[F64, F64]:
        """Start and end times of many vectors at once: `counts[i]` consecutive vectors belong to `clocks[i]`."""
        ...


class SensorClock:
    """Keeps the stamps of the samples a future window can still start at (`keep_samples` of them)."""

    stamps_each_sample: ClassVar[bool] = True

    def __init__(self, *, sample_period_s: float, keep_samples: int) -> None:
        self.sample_period_s, self._keep = sample_period_s, keep_samples
        self.samples = 0
        self.last_ts_s = float("-inf")
        self.ts: F64 = np.zeros(0)
        self.ts_base = 0  # stream sample index of ts[0]

    def fresh(self, stamp: Stamp, count: int, *, tolerance_s: float) -> npt.NDArray[np.bool_] | None:
        keep = np.asarray(stamp) > self.last_ts_s
        return None if keep.all() else keep

    def span(self, stamp: Stamp, count: int) -> tuple[float, float]:
        ts = np.asarray(stamp)
        return float(ts[0]), float(ts[-1])

    def continues(self, last: Stamp, last_count: int, stamp: Stamp, *, max_gap_s: float) -> bool:
        ts, before = np.asarray(stamp), np.asarray(last)
        step = float(ts[0]) - float(before[-1])
        return 0 < step <= max_gap_s and (len(ts) == 1 or bool(np.all(np.diff(ts) > 0)))

    def join(self, stamps: Sequence[Stamp]) -> Stamp:
        return np.concatenate([np.asarray(stamp, dtype=np.float64) for stamp in stamps])

    def advance(self, stamp: Stamp, count: int | None = None) -> None:
        ts = np.asarray(stamp, dtype=np.float64)
        self.samples += len(ts)
        self.last_ts_s = float(ts[-1])
        self.ts = np.concatenate((self.ts, ts))

    def time_of(self, sample: int) -> float:
        index = sample - self.ts_base
        known = min(index, len(self.ts) - 1)
        return float(self.ts[known]) + (index - known) * self.sample_period_s

    def end_of(self, end_sample: int) -> float:
        # One sample period after the last sample, so ends grow with the samples' own times however fast they come.
        return self.time_of(end_sample - 1) + self.sample_period_s

    def trim(self) -> None:
        drop = max(0, len(self.ts) - self._keep)
        self.ts, self.ts_base = self.ts[drop:], self.ts_base + drop

    @classmethod
    def vector_times(cls, clocks: Sequence[StreamClock], counts: I64, first: I64, end: I64) -> tuple[F64, F64]:
        sensor = [clock for clock in clocks if isinstance(clock, SensorClock)]
        times = [clock.ts for clock in sensor]
        sizes = np.array([len(t) for t in times])
        base = np.repeat(np.cumsum(sizes) - sizes - np.array([clock.ts_base for clock in sensor]), counts)
        ts = np.concatenate(times)
        return ts[base + first], ts[base + end - 1] + sensor[0].sample_period_s


class AudioClock:
    """Counts samples from the time of the stream's first chunk."""

    stamps_each_sample: ClassVar[bool] = False

    def __init__(self, *, sample_rate_hz: float) -> None:
        self.rate = float(sample_rate_hz)
        self.samples = 0
        self.last_ts_s = float("-inf")
        self.origin_s = 0.0

    def fresh(self, stamp: Stamp, count: int, *, tolerance_s: float) -> npt.NDArray[np.bool_] | None:
        expected = self.origin_s + self.samples / self.rate
        if self.samples and float(stamp) < expected - max(tolerance_s, 1 / self.rate):
            return np.zeros(count, dtype=bool)
        return None

    def span(self, stamp: Stamp, count: int) -> tuple[float, float]:
        return float(stamp), float(stamp) + count / self.rate

    def continues(self, last: Stamp, last_count: int, stamp: Stamp, *, max_gap_s: float) -> bool:
        # Within half a sample of where the last chunk ends: the sample clock (origin + index / rate) then gives every
        # sample of the chunk the time it would have been given alone; any other chunk is checked on its own.
        return abs(float(stamp) - self.span(last, last_count)[1]) <= 0.5 / self.rate

    def join(self, stamps: Sequence[Stamp]) -> Stamp:
        return float(stamps[0])

    def advance(self, stamp: Stamp, count: int | None = None) -> None:
        if self.samples == 0:
            self.origin_s = float(stamp)
        self.samples += int(count or 0)
        self.last_ts_s = self.span(stamp, int(count or 0))[1]

    def time_of(self, sample: int) -> float:
        return self.origin_s + sample / self.rate

    def end_of(self, end_sample: int) -> float:
        return self.time_of(end_sample)

    def trim(self) -> None:
        pass  # nothing is kept per sample

    @classmethod
    def vector_times(cls, clocks: Sequence[StreamClock], counts: I64, first: I64, end: I64) -> tuple[F64, F64]:
        audio = [clock for clock in clocks if isinstance(clock, AudioClock)]
        origin = np.repeat([clock.origin_s for clock in audio], counts)
        rate = audio[0].rate
        return origin + first / rate, origin + end / rate


def clock_factory(features: FeaturesConfig) -> Callable[[], StreamClock]:
    """Makes a fresh clock for each new stream of a bundle with these features."""
    if features.kind == "logmel":
        rate = features.logmel.sample_rate_hz
        return lambda: AudioClock(sample_rate_hz=rate)
    sensor = features.sensor
    # A window can still start at any of the last window + hop samples (2 more for differences and rounding).
    keep = sensor.window_samples + sensor.hop_samples + 2
    return lambda: SensorClock(sample_period_s=sensor.sample_period_s, keep_samples=keep)
