"""The one module that wires the stages: records -> per-stream features -> batched scoring -> windows -> alerts.

Per-stream state (feature buffers, window grouping, alert state) lives in a dict keyed by stream id, so a process
that owns a set of Kafka partitions owns exactly the state of their streams. One `process` call is one micro-batch:
the vectors of every stream routed to a bundle go through that bundle's network in a single batched pass.

Rules applied to each record, in order (a failed rule sends the record to the dead-letter sink with its reason):
  * routing: the first route whose pattern matches the stream id picks the bundle (`no_route` otherwise);
  * audio: sample rate and channel selection (`sample_rate`); sensors: channel names (`channel_mismatch`);
  * samples not newer than what the stream has seen are dropped and counted (`ae_monitor_late_samples_total`);
  * a gap longer than `max_gap_s` restarts the stream's windows (the stream is warming again);
  * missing values follow `features.sensor.nan_policy` (`nan_value` when it is 'reject').

Progress for at-least-once commits: `process_batch` returns where each record's samples landed in its stream
(`RecordPosition`); `is_done` is true once every window containing those samples has been scored (or can never be,
because the stream restarted or was dropped). A caller commits a record's offset only when it is done and the
alerts it caused were delivered.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.alerting import AlertPolicy, StreamAlertState
from ae_monitor.config import AlertingConfig, CalibrationConfig, DriftConfig, RouteConfig, StreamsConfig
from ae_monitor.drift import DriftWatch
from ae_monitor.errors import BundleError, DataError, RecordError, SampleRateError
from ae_monitor.features import FeatureStream
from ae_monitor.features.logmel import prepare_audio
from ae_monitor.features.sensor import SensorExtractor
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import (
    Alert,
    AudioRecord,
    CleanedWindow,
    DeadLetter,
    Record,
    SensorRecord,
    VectorCode,
    Vectors,
    WindowScore,
)
from ae_monitor.scoring import ScoredWindow, WindowAggregator, scorer_for, window_plan
from ae_monitor.sinks import AlertSink, DeadLetterSink
from ae_monitor.sources.base import Source
from ae_monitor.threshold import OnlineThresholds

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RecordPosition:
    """Where a record's samples went: stream, the stream's restart generation, index of its last sample."""

    stream: str
    generation: int
    last_sample: int


@dataclass(frozen=True)
class BatchResult:
    windows: list[WindowScore]
    alerts: list[Alert]
    positions: list[RecordPosition | None]  # one per input record; None = nothing left to wait for


class Slot:
    """One loaded bundle and what scores with it."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        alerting: AlertingConfig,
        batch_size: int,
        drift: DriftConfig,
        metrics: Metrics,
        online: CalibrationConfig | None = None,
    ) -> None:
        if bundle.calibration is None:
            raise BundleError("the bundle has no calibrated threshold; run `ae-monitor calibrate`", field="calibration")
        self.bundle = bundle
        self.scorer = scorer_for(bundle, batch_size=batch_size)
        self.policy = AlertPolicy(
            alerting,
            bundle_name=bundle.name,
            bundle_version=bundle.version,
            group_names=bundle.extractor.group_names,
            calibration=bundle.calibration,
        )
        self.plan = window_plan(bundle.features)
        self.online = _online_thresholds(bundle, online)
        publish = metrics.score_drift.labels(bundle.name).set
        self.drift = (
            DriftWatch.from_config(drift, bundle.calibration.reference_quantiles, bundle=bundle.name, publish=publish)
            if drift.enabled
            else None
        )


def _online_thresholds(bundle: Bundle, cfg: CalibrationConfig | None) -> OnlineThresholds | None:
    if cfg is None or cfg.online == "none":
        return None
    if bundle.calibration_scores is None:
        raise BundleError(
            "calibration.online = 'dspot' needs the calibration scores; recalibrate the bundle with this version",
            field="calibration.safetensors",
        )
    return OnlineThresholds(bundle.calibration_scores, cfg)


@dataclass
class StreamState:
    """Everything the pipeline keeps for one stream."""

    slot: str
    features: FeatureStream
    windows: WindowAggregator
    alert: StreamAlertState
    generation: int = 0
    origin_s: float = 0.0  # audio: time of sample 0
    samples: int = 0  # samples pushed since the last restart
    last_ts_s: float = float("-inf")
    ts_base: int = 0  # sensor: stream sample index of ts[0]
    ts: F64 = field(default_factory=lambda: np.zeros(0))
    warming: bool = True
    last_window_start: int = -1  # first sample of the newest window scored
    seen_wall_s: float = 0.0
    alert_changed: bool = False


class Router:
    """Picks a bundle for a stream id: the first matching route wins; results are cached per stream."""

    def __init__(self, routes: Sequence[tuple[RouteConfig, str]]) -> None:
        self._routes = [(_matcher(route), slot) for route, slot in routes]
        self._cache: dict[str, str | None] = {}

    def slot_for(self, stream: str) -> str | None:
        if stream not in self._cache:
            self._cache[stream] = next((slot for match, slot in self._routes if match(stream)), None)
        return self._cache[stream]


def _matcher(route: RouteConfig) -> Callable[[str], bool]:
    if route.syntax == "regex":
        pattern = re.compile(route.match)
        return lambda stream: pattern.fullmatch(stream) is not None
    return lambda stream: fnmatch.fnmatchcase(stream, route.match)


@dataclass(frozen=True)
class _Prepared:
    stream: str
    slot: str
    samples: npt.NDArray[np.floating]
    ts_s: F64 | float


@dataclass(frozen=True)
class _Pushed:
    stream: str
    vectors: Vectors
    state: StreamState


class Pipeline:
    """Scores records from any source with one or more bundles; alerts and dead letters go to sinks."""

    def __init__(
        self,
        bundles: Bundle | Mapping[str, Bundle],
        *,
        alerting: AlertingConfig,
        alerts: AlertSink,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        routes: Sequence[tuple[RouteConfig, str]] = (),
        streams: StreamsConfig | None = None,
        drift: DriftConfig | None = None,
        online: CalibrationConfig | None = None,
        codes: Callable[[Sequence[VectorCode]], None] | None = None,
        cleaned: Callable[[Sequence[CleanedWindow]], None] | None = None,
        max_gap_s: float = 10.0,
        batch_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        named = {bundles.name: bundles} if isinstance(bundles, Bundle) else dict(bundles)
        self._alerting, self._batch_size, self._drift = alerting, batch_size, drift or DriftConfig()
        self._online = online
        self._codes = codes  # when set, every scored vector's latent code is sent there (compression)
        self._cleaned = cleaned  # when set, every scored vector's reconstruction (denoised) is sent there
        self._metrics = metrics
        self._slots = {name: self._slot(bundle) for name, bundle in named.items()}
        self._router = Router(routes or [(RouteConfig(bundle_path=""), next(iter(named)))])
        self._alerts, self._dead, self._metrics = alerts, dead_letters, metrics
        self._limits = streams or StreamsConfig()
        self._max_gap_s, self._clock = max_gap_s, clock
        self._streams: dict[str, StreamState] = {}
        self._restored: dict[str, Mapping[str, Any]] = {}
        for slot in self._slots.values():
            self._publish_bundle(slot.bundle)

    @property
    def streams(self) -> dict[str, StreamState]:
        return self._streams

    @property
    def bundles(self) -> dict[str, Bundle]:
        return {name: slot.bundle for name, slot in self._slots.items()}

    # -- the micro-batch -------------------------------------------------------------------------------------

    def process(self, records: Sequence[Record]) -> list[WindowScore]:
        """Run one micro-batch; returns the window scores it produced."""
        return self.process_batch(records).windows

    def process_batch(self, records: Sequence[Record], *, arrival_s: float | None = None) -> BatchResult:
        """Run one micro-batch: dead letters and alerts are sent (and acknowledged) before this returns.

        Consecutive in-order sensor records of one stream are pushed as one block (the common case of one sample
        per message), which gives the same vectors as pushing them one by one."""
        self._metrics.records.inc(len(records))
        positions: list[RecordPosition | None] = [None] * len(records)
        letters: list[DeadLetter] = []
        by_stream: dict[str, list[tuple[int, _Prepared]]] = {}
        for i, record in enumerate(records):
            try:
                by_stream.setdefault(record.stream, []).append((i, self._prepare(record)))
            except (RecordError, DataError) as exc:
                letters.append(_dead_letter(record, exc))
        pushed: list[_Pushed] = []
        for items in by_stream.values():
            for run in self._runs(items):
                letters += self._push_run(run, records, pushed, positions)
        if letters:
            self._send_dead_letters(letters)
        return self._finish(pushed, positions, arrival_s)

    def _runs(self, items: list[tuple[int, _Prepared]]) -> list[list[tuple[int, _Prepared]]]:
        """Split one stream's records into blocks that can be pushed together: sensor records whose timestamps
        increase across record boundaries without a restart-sized gap."""
        runs: list[list[tuple[int, _Prepared]]] = []
        for i, item in items:
            last = runs[-1][-1][1] if runs else None
            if last is not None and _continues(last, item, self._max_gap_s):
                runs[-1].append((i, item))
            else:
                runs.append([(i, item)])
        return runs

    def _push_run(
        self,
        run: list[tuple[int, _Prepared]],
        records: Sequence[Record],
        pushed: list[_Pushed],
        positions: list[RecordPosition | None],
    ) -> list[DeadLetter]:
        if len(run) > 1 and self._fresh(run[0][1]):
            try:
                self._push_block(run, pushed, positions)
                return []
            except (RecordError, DataError):
                pass  # the feature stream refused the block unchanged: find the bad records one by one
        letters = []
        for i, item in run:
            try:
                item_pushed, positions[i] = self._push(item)
                pushed.append(item_pushed)
            except (RecordError, DataError) as exc:
                letters.append(_dead_letter(records[i], exc))
        return letters

    def _fresh(self, item: _Prepared) -> bool:
        state = self._streams.get(item.stream)
        return state is None or (not isinstance(item.ts_s, float) and float(item.ts_s[0]) > state.last_ts_s)

    def _push_block(
        self, run: list[tuple[int, _Prepared]], pushed: list[_Pushed], positions: list[RecordPosition | None]
    ) -> None:
        first = run[0][1]
        block = _Prepared(
            first.stream,
            first.slot,
            np.concatenate([item.samples for _, item in run]),
            np.concatenate([item.ts_s for _, item in run if not isinstance(item.ts_s, float)]),
        )
        item_pushed, position = self._push(block)
        pushed.append(item_pushed)
        assert position is not None  # the block is fresh, so no sample was dropped
        remaining = len(block.samples)
        for i, item in run:
            remaining -= len(item.samples)
            positions[i] = RecordPosition(block.stream, position.generation, position.last_sample - remaining)

    def flush(self) -> list[WindowScore]:
        """End of input: emit what the streams hold back (audio end padding), as a last micro-batch."""
        pushed = [_Pushed(name, state.features.flush(), state) for name, state in self._streams.items()]
        return self._finish(pushed, [], None).windows

    def run(self, source: Source, *, max_records: int = 256) -> int:
        """Consume `source` until it is exhausted; returns the number of windows scored."""
        scored = 0
        while not source.exhausted:
            scored += len(self.process(source.poll(max_records=max_records)))
        return scored + len(self.flush())

    def _finish(self, pushed: list[_Pushed], positions: list[RecordPosition | None],
                arrival_s: float | None) -> BatchResult:  # fmt: skip
        windows = self._score(pushed)
        for state in {id(p.state): p.state for p in pushed}.values():
            self._trim_times(state)
        if arrival_s is not None and windows:
            self._metrics.record_latency.observe(max(0.0, self._clock() - arrival_s))
        alerts = self._decide(windows)
        if alerts:
            self._alerts.send(alerts)
        self._update_gauges(windows, alerts)
        return BatchResult(windows, alerts, positions)

    # -- progress, lifecycle of streams ------------------------------------------------------------------------

    def is_done(self, position: RecordPosition) -> bool:
        """True once every window containing the record's samples was scored, or never will be."""
        state = self._streams.get(position.stream)
        if state is None or state.generation != position.generation:
            return True
        return state.last_window_start > position.last_sample

    def drop_streams(self, names: Sequence[str], *, reason: str = "revoked") -> None:
        """Forget streams (their partitions moved to another process); their new owner warms up."""
        for name in names:
            state = self._streams.pop(name, None)
            if state is not None:
                self._metrics.evicted.labels(reason).inc()
                self._metrics.forget_stream(name, self._slots[state.slot].bundle.name)
        self._update_gauges([], [])

    def evict_idle(self, now_wall_s: float) -> list[str]:
        """Drop streams that sent nothing for `streams.idle_eviction_s`; returns their names."""
        idle = [n for n, s in self._streams.items() if now_wall_s - s.seen_wall_s > self._limits.idle_eviction_s]
        self.drop_streams(idle, reason="idle")
        return idle

    def swap_bundle(self, name: str, bundle: Bundle) -> None:
        """Replace bundle `name` atomically between micro-batches. Streams keep their buffers when the features are
        unchanged (else they restart); alert episodes continue, new episodes carry the new version."""
        old = self._slots[name]
        self._slots[name] = self._slot(bundle)
        self._metrics.bundle_info.labels(old.bundle.name, old.bundle.version).set(0)
        self._publish_bundle(bundle)
        if bundle.features != old.bundle.features:
            for stream, state in list(self._streams.items()):
                if state.slot == name:
                    self._restart(stream, state)

    def _slot(self, bundle: Bundle) -> Slot:
        return Slot(bundle, alerting=self._alerting, batch_size=self._batch_size, drift=self._drift,
                    metrics=self._metrics, online=self._online)  # fmt: skip

    def restore_alert_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Alert states read back after a restart; applied when each stream is next seen."""
        self._restored.update(states)

    def take_changed_alert_states(self) -> dict[str, dict[str, Any]]:
        """Alert states that changed since the last call (to persist them), keyed by stream."""
        changed = {}
        for name, state in self._streams.items():
            if state.alert_changed:
                changed[name] = state.alert.to_dict()
                state.alert_changed = False
        return changed

    # -- per record --------------------------------------------------------------------------------------------

    def _prepare(self, record: Record) -> _Prepared:
        slot_name = self._router.slot_for(record.stream)
        if slot_name is None:
            raise RecordError(f"no route matches stream {record.stream!r}", reason="no_route")
        bundle = self._slots[slot_name].bundle
        if isinstance(record, AudioRecord):
            if bundle.features.kind != "logmel":
                raise RecordError("audio record for a sensor bundle", reason="wrong_kind")
            samples = prepare_audio(record.samples, record.sample_rate_hz, bundle.features.logmel)
            return _Prepared(record.stream, slot_name, samples, record.ts_s)
        if bundle.features.kind != "sensor":
            raise RecordError("sensor record for an audio bundle", reason="wrong_kind")
        values = _ordered_channels(record, bundle.extractor.group_names)
        return _Prepared(record.stream, slot_name, values, np.asarray(record.ts_s, dtype=np.float64))

    def _push(self, item: _Prepared) -> tuple[_Pushed, RecordPosition | None]:
        state = self._streams.get(item.stream) or self._new_state(item.stream, item.slot)
        state.seen_wall_s = self._clock()
        item = self._drop_late(state, item)
        if len(item.samples) == 0:
            return _Pushed(item.stream, Vectors.empty(1), state), None
        first_ts, last_ts = self._span(item)
        if state.samples and first_ts - state.last_ts_s > self._max_gap_s:
            log.info("stream %s: gap of %.1f s, restarting its windows", item.stream, first_ts - state.last_ts_s)
            state = self._restart(item.stream, state)
        vectors = state.features.push(item.samples)
        self._note_times(state, item, last_ts)
        self._metrics.samples.inc(len(item.samples))
        return _Pushed(item.stream, vectors, state), RecordPosition(item.stream, state.generation, state.samples - 1)

    def _drop_late(self, state: StreamState, item: _Prepared) -> _Prepared:
        if isinstance(item.ts_s, float):
            expected = state.origin_s + state.samples / self._rate(state)
            if state.samples and item.ts_s < expected - max(self._limits.late_tolerance_s, 1 / self._rate(state)):
                self._metrics.late_samples.inc(len(item.samples))
                return _Prepared(item.stream, item.slot, item.samples[:0], item.ts_s)
            return item
        fresh = item.ts_s > state.last_ts_s
        if fresh.all():
            return item
        self._metrics.late_samples.inc(int((~fresh).sum()))
        return _Prepared(item.stream, item.slot, item.samples[fresh], item.ts_s[fresh])

    def _span(self, item: _Prepared) -> tuple[float, float]:
        if isinstance(item.ts_s, float):
            rate = self._slots[item.slot].bundle.features.logmel.sample_rate_hz
            return item.ts_s, item.ts_s + len(item.samples) / rate
        return float(item.ts_s[0]), float(item.ts_s[-1])

    def _note_times(self, state: StreamState, item: _Prepared, last_ts: float) -> None:
        if state.samples == 0 and isinstance(item.ts_s, float):
            state.origin_s = item.ts_s
        state.samples += len(item.samples)
        state.last_ts_s = last_ts
        self._metrics.stream_last_sample.labels(item.stream).set(last_ts)
        if not isinstance(item.ts_s, float):
            state.ts = np.concatenate([state.ts, item.ts_s])

    def _trim_times(self, state: StreamState) -> None:
        # Keep only the timestamps a future window can still start at.
        sensor = self._slots[state.slot].bundle.features.sensor
        drop = max(0, len(state.ts) - (sensor.window_samples + sensor.hop_samples + 2))
        state.ts, state.ts_base = state.ts[drop:], state.ts_base + drop

    def _rate(self, state: StreamState) -> float:
        return float(self._slots[state.slot].bundle.features.logmel.sample_rate_hz)

    def _new_state(self, stream: str, slot_name: str) -> StreamState:
        if len(self._streams) >= self._limits.max_streams:
            oldest = min(self._streams, key=lambda n: self._streams[n].seen_wall_s)
            self.drop_streams([oldest], reason="capacity")
        slot = self._slots[slot_name]
        alert = slot.policy.new_state()
        if stream in self._restored:
            alert = StreamAlertState.from_dict(self._restored.pop(stream))
        state = StreamState(slot_name, slot.bundle.extractor.stream(), WindowAggregator(*slot.plan), alert)
        self._streams[stream] = state
        return state

    def _restart(self, stream: str, old: StreamState) -> StreamState:
        slot = self._slots[old.slot]
        state = StreamState(old.slot, slot.bundle.extractor.stream(), WindowAggregator(*slot.plan), old.alert,
                            generation=old.generation + 1, seen_wall_s=old.seen_wall_s)  # fmt: skip
        self._streams[stream] = state  # alert episodes span restarts; only the windows start again
        return state

    # -- scoring and decisions ---------------------------------------------------------------------------------

    def _score(self, pushed: list[_Pushed]) -> list[WindowScore]:
        by_slot: dict[str, list[_Pushed]] = {}
        for item in pushed:
            if len(item.vectors):
                by_slot.setdefault(item.state.slot, []).append(item)
        windows: list[WindowScore] = []
        for slot_name, items in by_slot.items():
            windows += self._score_slot(self._slots[slot_name], items)
        return windows

    def _score_slot(self, slot: Slot, items: list[_Pushed]) -> list[WindowScore]:
        started = time.perf_counter()
        data = np.concatenate([item.vectors.data for item in items])
        scores = slot.scorer.score(data)
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        if self._codes is not None:
            self._codes(self._vector_codes(slot, items, slot.scorer.encode(data)))
        if self._cleaned is not None:
            self._cleaned(self._cleaned_windows(slot, items, slot.scorer.reconstruct(data)))
        windows: list[WindowScore] = []
        offset = 0
        for item in items:
            state = item.state  # the state that made these vectors, even if the stream restarted since
            part = scores.slice(offset, offset + len(item.vectors))
            offset += len(item.vectors)
            for window in state.windows.push(part, item.vectors.first_sample, item.vectors.end_sample):
                scored = self._window_score(item.stream, state, slot.bundle, window)
                windows.append(scored if slot.online is None else slot.online(scored))
                if slot.drift is not None:
                    slot.drift.observe(window.score)
        return windows

    def _vector_spans(self, slot: Slot, items: list[_Pushed]) -> list[tuple[str, float, float]]:
        """(stream, start_s, end_s) of every vector of `items`, in batch order."""
        spans = []
        for item in items:
            vectors = item.vectors
            for first, end in zip(vectors.first_sample.tolist(), vectors.end_sample.tolist(), strict=True):
                spans.append((item.stream, self._time_of(item.state, slot.bundle, first),
                              self._end_of(item.state, slot.bundle, end)))  # fmt: skip
        return spans

    def _cleaned_windows(self, slot: Slot, items: list[_Pushed], recon: npt.NDArray[np.float32]) -> list[CleanedWindow]:
        bundle, unscale = slot.bundle, _unscaler(slot.bundle)
        out = []
        for (stream, start, end), row in zip(self._vector_spans(slot, items), recon, strict=True):
            values = unscale(row) if unscale is not None else {}
            vector = () if values else tuple(row.tolist())
            out.append(CleanedWindow(stream, bundle.name, bundle.version, start, end, values, vector))
        return out

    def _vector_codes(self, slot: Slot, items: list[_Pushed], codes: npt.NDArray[np.float32]) -> list[VectorCode]:
        bundle = slot.bundle
        return [
            VectorCode(stream, bundle.name, bundle.version, start, end, tuple(code))
            for (stream, start, end), code in zip(self._vector_spans(slot, items), codes.tolist(), strict=True)
        ]

    def _window_score(self, stream: str, state: StreamState, bundle: Bundle, window: ScoredWindow) -> WindowScore:
        state.warming = False
        state.last_window_start = int(window.start)
        start_s, end_s = self._time_of(state, bundle, int(window.start)), self._end_of(state, bundle, int(window.end))
        return WindowScore(stream, bundle.name, start_s, end_s, window.score, bundle.threshold, window.contributions)

    def _end_of(self, state: StreamState, bundle: Bundle, end_sample: int) -> float:
        """A window's end: one sample period after its last sample (so ends grow with the samples' own times,
        however fast they arrive)."""
        if bundle.features.kind == "logmel":
            return self._time_of(state, bundle, end_sample)
        return self._time_of(state, bundle, end_sample - 1) + bundle.features.sensor.sample_period_s

    def _time_of(self, state: StreamState, bundle: Bundle, sample: int) -> float:
        """Epoch seconds of a stream sample index; an index past the last known sample extrapolates."""
        if bundle.features.kind == "logmel":
            return state.origin_s + sample / bundle.features.logmel.sample_rate_hz
        index = sample - state.ts_base
        known = min(index, len(state.ts) - 1)
        return float(state.ts[known]) + (index - known) * bundle.features.sensor.sample_period_s

    def _decide(self, windows: list[WindowScore]) -> list[Alert]:
        alerts: list[Alert] = []
        now = self._clock()
        for window in windows:
            state = self._streams.get(window.stream)
            if state is None:
                continue  # evicted for capacity later in the same batch; its next record starts it again
            new = self._slots[state.slot].policy.update(state.alert, window, now_s=now)
            # Persist what a restart needs: episodes and the anomalous windows counting towards one. A quiet
            # stream's state is not republished for every window.
            state.alert_changed |= bool(new) or window.anomalous or state.alert.firing
            for _ in new:
                self._metrics.alert_latency.observe(max(0.0, now - window.end_s))
            alerts.extend(new)
        return alerts

    # -- metrics -----------------------------------------------------------------------------------------------

    def _publish_bundle(self, bundle: Bundle) -> None:
        self._metrics.bundle_started(bundle.name)
        self._metrics.threshold.labels(bundle.name).set(bundle.threshold)
        self._metrics.bundle_info.labels(bundle.name, bundle.version).set(1)

    def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        self._dead.send(letters)
        for letter in letters:
            self._metrics.dead_letters.labels(letter.reason).inc()

    def _update_gauges(self, windows: list[WindowScore], alerts: list[Alert]) -> None:
        latest: dict[tuple[str, str], WindowScore] = {}
        by_bundle: dict[str, list[float]] = {}
        for window in windows:
            latest[(window.stream, window.bundle)] = window
            by_bundle.setdefault(window.bundle, []).append(window.score / window.threshold)
        for (stream, bundle), window in latest.items():
            self._metrics.score.labels(stream, bundle).set(window.score)
            self._metrics.window_threshold.labels(stream, bundle).set(window.threshold)
        for bundle, ratios in by_bundle.items():
            self._metrics.windows.labels(bundle).inc(len(ratios))
            histogram = self._metrics.score_hist.labels(bundle)
            for ratio in ratios:
                histogram.observe(ratio)
        for alert in alerts:
            self._metrics.alerts.labels(alert.bundle_name, alert.status).inc()
            self._metrics.firing.labels(alert.stream).set(1 if alert.status == "firing" else 0)
        self._metrics.streams_active.set(len(self._streams))
        self._metrics.streams_warming.set(sum(s.warming for s in self._streams.values()))


def _unscaler(bundle: Bundle) -> Callable[[npt.NDArray[np.float32]], dict[str, tuple[float, ...]]] | None:
    """Turns a reconstructed sensor window back into raw units per channel (None where that is not possible)."""
    extractor = bundle.extractor
    if (
        bundle.features.kind != "sensor"
        or bundle.features.sensor.differences
        or not isinstance(extractor, SensorExtractor)
    ):
        return None
    offset, scale, _ = extractor.scaling_arrays()
    shape = extractor.vector_shape

    def unscale(row: npt.NDArray[np.float32]) -> dict[str, tuple[float, ...]]:
        raw = row.reshape(shape) * scale + offset
        return {name: tuple(raw[:, c].tolist()) for c, name in enumerate(extractor.group_names)}

    return unscale


def _continues(last: _Prepared, item: _Prepared, max_gap_s: float) -> bool:
    if isinstance(last.ts_s, float) or isinstance(item.ts_s, float) or last.slot != item.slot:
        return False
    step = float(item.ts_s[0]) - float(last.ts_s[-1])
    return 0 < step <= max_gap_s and (len(item.ts_s) == 1 or bool(np.all(np.diff(item.ts_s) > 0)))


def _ordered_channels(record: SensorRecord, expected: tuple[str, ...]) -> npt.NDArray[np.floating]:
    if tuple(record.channels) == expected:
        return record.values
    if set(record.channels) != set(expected):
        missing = sorted(set(expected) - set(record.channels))
        extra = sorted(set(record.channels) - set(expected))
        raise RecordError(
            f"channels do not match the bundle's: missing {missing}, unexpected {extra}", reason="channel_mismatch"
        )
    return record.values[:, [record.channels.index(name) for name in expected]]


def _dead_letter(record: Record, exc: RecordError | DataError) -> DeadLetter:
    if isinstance(exc, RecordError):
        reason = exc.reason
    else:
        reason = "sample_rate" if isinstance(exc, SampleRateError) else "invalid_record"
    return DeadLetter(source=record.stream, reason=reason, message=str(exc))
