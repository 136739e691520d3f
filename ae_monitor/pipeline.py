"""The one module that wires the stages: records -> per-stream features -> batched scoring -> windows -> alerts.

Per-stream state (feature buffers, window grouping, alert state) lives in a dict keyed by stream id, so a process
that owns a set of Kafka partitions owns exactly the state of their streams. One `process` call is one micro-batch:
the vectors of every stream in it go through the network in a single batched pass.

Rules applied to each record, in order (a failed rule sends the record to the dead-letter sink with its reason):
  * audio: sample rate and channel selection (`sample_rate`, `channel`); sensors: channel names (`channel_mismatch`);
  * a record older than what the stream has already seen is `out_of_order`;
  * a gap longer than `replay.max_gap_s` restarts the stream's windows (the stream is warming again);
  * missing values follow `features.sensor.nan_policy` (`nan_value` when it is 'reject').
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ae_monitor.alerting import AlertPolicy, StreamAlertState
from ae_monitor.config import AlertingConfig
from ae_monitor.errors import BundleError, DataError, RecordError, SampleRateError
from ae_monitor.features import FeatureStream
from ae_monitor.features.logmel import prepare_audio
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import Alert, AudioRecord, DeadLetter, Record, SensorRecord, Vectors, WindowScore
from ae_monitor.scoring import ScoredWindow, Scorer, WindowAggregator, window_plan
from ae_monitor.sinks import AlertSink, DeadLetterSink
from ae_monitor.sources.base import Source
from ae_monitor.threshold import Calibration

log = logging.getLogger(__name__)


@dataclass
class _StreamState:
    """Everything the pipeline keeps for one stream."""

    features: FeatureStream
    windows: WindowAggregator
    alert: StreamAlertState
    origin_s: float = 0.0  # audio: time of sample 0
    samples: int = 0  # samples pushed since the last restart
    last_ts_s: float = float("-inf")
    ts_base: int = 0  # sensor: stream sample index of ts[0]
    ts: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    warming: bool = True


@dataclass(frozen=True)
class _Pushed:
    """The vectors one record produced, with the epoch seconds each starts and ends at."""

    stream: str
    vectors: Vectors
    start_s: npt.NDArray[np.float64]
    end_s: npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Prepared:
    stream: str
    samples: npt.NDArray[np.floating]
    ts_s: npt.NDArray[np.float64] | float


class Pipeline:
    """Scores records from any source with one bundle and sends alerts and dead letters to sinks."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        alerting: AlertingConfig,
        alerts: AlertSink,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        max_gap_s: float = 10.0,
        batch_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bundle = bundle
        self._scorer = Scorer(
            bundle.model,
            vector_shape=bundle.extractor.vector_shape,
            model_config=bundle.model_config,
            loss=bundle.training.loss,
            batch_size=batch_size,
        )
        self._policy = AlertPolicy(
            alerting,
            bundle_name=bundle.name,
            bundle_version=bundle.version,
            group_names=bundle.extractor.group_names,
            calibration=_require_calibration(bundle),
        )
        self._plan = window_plan(bundle.features)
        self._alerts, self._dead, self._metrics = alerts, dead_letters, metrics
        self._max_gap_s, self._clock = max_gap_s, clock
        self._streams: dict[str, _StreamState] = {}
        metrics.threshold.labels(bundle.name).set(bundle.threshold)
        metrics.bundle_info.labels(bundle.name, bundle.version).set(1)

    @property
    def streams(self) -> dict[str, _StreamState]:
        return self._streams

    def process(self, records: Sequence[Record]) -> list[WindowScore]:
        """Run one micro-batch. Returns the window scores it produced (alerts and dead letters go to the sinks)."""
        pushed: list[_Pushed] = []
        letters: list[DeadLetter] = []
        for record in records:
            self._metrics.records.inc()
            try:
                pushed.append(self._push(self._prepare(record)))
            except (RecordError, DataError) as exc:
                letters.append(_dead_letter(record, exc))
        return self._finish_batch(pushed, letters)

    def flush(self) -> list[WindowScore]:
        """End of input: emit what the streams hold back (audio end padding), as a last micro-batch."""
        pushed = [self._flushed(name, state) for name, state in self._streams.items()]
        return self._finish_batch(pushed, [])

    def _flushed(self, stream: str, state: _StreamState) -> _Pushed:
        vectors = state.features.flush()
        return _Pushed(
            stream, vectors, self._times(state, vectors.first_sample), self._times(state, vectors.end_sample)
        )

    def run(self, source: Source, *, max_records: int = 256) -> int:
        """Consume `source` until it is exhausted; returns the number of windows scored."""
        scored = 0
        while not source.exhausted:
            scored += len(self.process(source.poll(max_records=max_records)))
        return scored + len(self.flush())

    def _finish_batch(self, pushed: list[_Pushed], letters: list[DeadLetter]) -> list[WindowScore]:
        windows = self._score(pushed)
        alerts = self._decide(windows)
        if letters:
            self._dead.send(letters)
            for letter in letters:
                self._metrics.dead_letters.labels(letter.reason).inc()
        if alerts:
            self._alerts.send(alerts)
        self._update_gauges(windows, alerts)
        return windows

    def _prepare(self, record: Record) -> _Prepared:
        if isinstance(record, AudioRecord):
            samples = prepare_audio(record.samples, record.sample_rate_hz, self._bundle.features.logmel)
            return _Prepared(record.stream, samples, record.ts_s)
        return _Prepared(record.stream, self._ordered_channels(record), np.asarray(record.ts_s, dtype=np.float64))

    def _ordered_channels(self, record: SensorRecord) -> npt.NDArray[np.floating]:
        expected = self._bundle.extractor.group_names
        if tuple(record.channels) == expected:
            return record.values
        if set(record.channels) != set(expected):
            missing = sorted(set(expected) - set(record.channels))
            extra = sorted(set(record.channels) - set(expected))
            raise RecordError(
                f"channels do not match the bundle's: missing {missing}, unexpected {extra}", reason="channel_mismatch"
            )
        order = [record.channels.index(name) for name in expected]
        return record.values[:, order]

    def _push(self, item: _Prepared) -> _Pushed:
        state = self._streams.get(item.stream) or self._new_state(item.stream)
        first_ts, last_ts = self._record_span(item)
        if first_ts < state.last_ts_s - 1e-9:
            raise RecordError(
                f"record starts at {first_ts} but stream {item.stream!r} has reached {state.last_ts_s}",
                reason="out_of_order",
            )
        if state.samples and first_ts - state.last_ts_s > self._max_gap_s:
            log.info("stream %s: gap of %.1f s, restarting its windows", item.stream, first_ts - state.last_ts_s)
            state = self._restart(item.stream, state)
        vectors = state.features.push(item.samples)
        self._note_times(state, item, last_ts)
        pushed = _Pushed(item.stream, vectors, self._times(state, vectors.first_sample),
                         self._times(state, vectors.end_sample))  # fmt: skip
        self._trim_times(state)
        self._metrics.samples.inc(len(item.samples))
        return pushed

    def _record_span(self, item: _Prepared) -> tuple[float, float]:
        if isinstance(item.ts_s, float):
            rate = self._bundle.features.logmel.sample_rate_hz
            return item.ts_s, item.ts_s + len(item.samples) / rate
        return float(item.ts_s[0]), float(item.ts_s[-1])

    def _note_times(self, state: _StreamState, item: _Prepared, last_ts: float) -> None:
        if state.samples == 0 and isinstance(item.ts_s, float):
            state.origin_s = item.ts_s
        state.samples += len(item.samples)
        state.last_ts_s = last_ts
        if not isinstance(item.ts_s, float):
            state.ts = np.concatenate([state.ts, item.ts_s])

    def _trim_times(self, state: _StreamState) -> None:
        # Keep only the timestamps a future window can still start at.
        sensor = self._bundle.features.sensor
        drop = max(0, len(state.ts) - (sensor.window_samples + sensor.hop_samples + 2))
        state.ts, state.ts_base = state.ts[drop:], state.ts_base + drop

    def _times(self, state: _StreamState, samples: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Epoch seconds of stream sample indices; an index one past the last known sample extrapolates."""
        if self._bundle.features.kind == "logmel":
            return state.origin_s + samples / self._bundle.features.logmel.sample_rate_hz
        index = samples - state.ts_base
        known = np.minimum(index, len(state.ts) - 1)
        beyond = index - known
        return state.ts[known] + beyond * self._bundle.features.sensor.sample_period_s

    def _new_state(self, stream: str) -> _StreamState:
        state = _StreamState(
            features=self._bundle.extractor.stream(),
            windows=WindowAggregator(*self._plan),
            alert=self._policy.new_state(),
        )
        self._streams[stream] = state
        return state

    def _restart(self, stream: str, old: _StreamState) -> _StreamState:
        state = self._new_state(stream)
        state.alert = old.alert  # alert episodes span gaps; only the windows restart
        return state

    def _score(self, pushed: list[_Pushed]) -> list[WindowScore]:
        pushed = [p for p in pushed if len(p.vectors)]
        if not pushed:
            return []
        started = time.perf_counter()
        scores = self._scorer.score(np.concatenate([p.vectors.data for p in pushed]))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        windows: list[WindowScore] = []
        offset = 0
        for item in pushed:
            state = self._streams[item.stream]
            part = scores.slice(offset, offset + len(item.vectors))
            offset += len(item.vectors)
            for window in state.windows.push(part, item.start_s, item.end_s):
                state.warming = False
                windows.append(self._window_score(item.stream, window))
        return windows

    def _window_score(self, stream: str, window: ScoredWindow) -> WindowScore:
        return WindowScore(
            stream, self._bundle.name, window.start, window.end, window.score, self._bundle.threshold,
            window.contributions,
        )  # fmt: skip

    def _decide(self, windows: list[WindowScore]) -> list[Alert]:
        alerts: list[Alert] = []
        now = self._clock()
        for window in windows:
            alerts.extend(self._policy.update(self._streams[window.stream].alert, window, now_s=now))
        return alerts

    def _update_gauges(self, windows: list[WindowScore], alerts: list[Alert]) -> None:
        name = self._bundle.name
        if windows:
            self._metrics.windows.labels(name).inc(len(windows))
        for window in windows:
            self._metrics.score.labels(window.stream, name).set(window.score)
        for alert in alerts:
            self._metrics.alerts.labels(name, alert.status).inc()
            self._metrics.firing.labels(alert.stream).set(1 if alert.status == "firing" else 0)
        self._metrics.streams_active.set(len(self._streams))
        self._metrics.streams_warming.set(sum(s.warming for s in self._streams.values()))


def _require_calibration(bundle: Bundle) -> Calibration:
    if bundle.calibration is None:
        raise BundleError("the bundle has no calibrated threshold; run `ae-monitor calibrate`", field="calibration")
    return bundle.calibration


def _dead_letter(record: Record, exc: RecordError | DataError) -> DeadLetter:
    if isinstance(exc, RecordError):
        reason = exc.reason
    else:
        reason = "sample_rate" if isinstance(exc, SampleRateError) else "invalid_record"
    return DeadLetter(source=record.stream, reason=reason, message=str(exc))
