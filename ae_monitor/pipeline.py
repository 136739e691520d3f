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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.alerting import AlertPolicy, StreamAlertState
from ae_monitor.config import AlertingConfig, CalibrationConfig, DriftConfig, RouteConfig, StreamsConfig
from ae_monitor.drift import DriftWatch
from ae_monitor.errors import BundleError, DataError, RecordError, SampleRateError
from ae_monitor.features import FeatureStream
from ae_monitor.features.logmel import prepare_audio
from ae_monitor.features.sensor import SensorExtractor, SensorStream, push_many
from ae_monitor.metrics import Metrics, StreamReading
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import (
    Alert,
    AudioRecord,
    CleanedWindow,
    DeadLetter,
    IntArray,
    Record,
    SampleRows,
    SensorRecord,
    VectorCode,
    Vectors,
    WindowScore,
    WindowTable,
)
from ae_monitor.scoring import ScoredWindow, VectorScores, WindowAggregator, scorer_for, window_plan
from ae_monitor.sinks import AlertSink, DeadLetterSink
from ae_monitor.sources.base import Source
from ae_monitor.sources.decode import record_payload
from ae_monitor.threshold import OnlineThresholds

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RecordPosition:
    """Where a record's samples went: stream, the stream's restart generation, index of its last sample."""

    stream: str
    generation: int
    last_sample: int


class Progress:
    """Where each row of a micro-batch landed, columnar (a record is one row, a SampleRows block one row per
    sample). A row with no position has nothing left to wait for (it was dead-lettered, or all late)."""

    def __init__(self, rows: int) -> None:
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self.stream = np.full(rows, -1, dtype=np.int64)
        self.generation = np.zeros(rows, dtype=np.int64)
        self.last_sample = np.zeros(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.stream)

    def set(self, row: int, position: RecordPosition) -> None:
        self.stream[row] = self._id(position.stream)
        self.generation[row], self.last_sample[row] = position.generation, position.last_sample

    def set_rows(self, rows: npt.NDArray[np.int64], streams: Sequence[str], counts: Sequence[int],
                 generations: Sequence[int], last_samples: npt.NDArray[np.int64]) -> None:  # fmt: skip
        """Rows of several streams at once: the first counts[0] of `rows` belong to streams[0], and so on."""
        sizes = np.asarray(counts)
        self.stream[rows] = np.repeat([self._id(name) for name in streams], sizes)
        self.generation[rows] = np.repeat(np.asarray(generations, dtype=np.int64), sizes)
        self.last_sample[rows] = last_samples

    def position(self, row: int) -> RecordPosition | None:
        stream = int(self.stream[row])
        if stream < 0:
            return None
        return RecordPosition(self._names[stream], int(self.generation[row]), int(self.last_sample[row]))

    def positions(self) -> list[RecordPosition | None]:
        return [self.position(row) for row in range(len(self))]

    def latest(self, start: int, stop: int) -> list[RecordPosition]:
        """The newest position of each stream among rows [start, stop): once those are done, all the rows are."""
        ids = self.stream[start:stop][::-1]
        found, first = np.unique(ids, return_index=True)
        rows = [stop - 1 - int(i) for stream, i in zip(found.tolist(), first.tolist(), strict=True) if stream >= 0]
        return [p for p in (self.position(row) for row in rows) if p is not None]

    def _id(self, name: str) -> int:
        if name not in self._ids:
            self._ids[name] = len(self._names)
            self._names.append(name)
        return self._ids[name]


@dataclass(frozen=True)
class BatchResult:
    tables: list[WindowTable]
    alerts: list[Alert]
    progress: Progress

    @property
    def windows(self) -> list[WindowScore]:
        return [window for table in self.tables for window in table.rows()]

    @property
    def window_count(self) -> int:
        return sum(len(table) for table in self.tables)

    @property
    def positions(self) -> list[RecordPosition | None]:
        """One per input row (see Progress)."""
        return self.progress.positions()


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
    last_score: float | None = None  # the newest window's, for the per-stream gauges
    last_threshold: float | None = None


class Router:
    """Picks a bundle for a stream: the first route whose pattern matches wins. A route matches the stream id, or
    with `field` set, that routing tag of the stream's record (a JSON field or header, say the machine type). A
    stream's bundle is decided by its first record and kept (a stream does not change machine type)."""

    def __init__(self, routes: Sequence[tuple[RouteConfig, str]]) -> None:
        self._routes = [(route.field, _matcher(route), slot) for route, slot in routes]
        self._cache: dict[str, str | None] = {}

    def slot_for(self, stream: str, tags: Mapping[str, str] | None = None) -> str | None:
        if stream not in self._cache:
            self._cache[stream] = self._first_match(stream, tags or {})
        return self._cache[stream]

    def _first_match(self, stream: str, tags: Mapping[str, str]) -> str | None:
        for name, match, slot in self._routes:
            subject = stream if name == "stream" else tags.get(name)
            if subject is not None and match(subject):
                return slot
        return None

    def forget(self, stream: str) -> None:
        self._cache.pop(stream, None)


def routing_fields(routes: Sequence[RouteConfig]) -> tuple[str, ...]:
    """The record fields the routes match on (besides the stream id): what the sources must keep as tags."""
    return tuple(sorted({route.field for route in routes if route.field != "stream"}))


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
class _Segment:
    """`count` consecutive vectors of one stream, made by `state` (the stream's state when they were pushed)."""

    stream: str
    state: StreamState
    count: int


@dataclass(frozen=True)
class _Pushed:
    """Vectors one push made for one bundle: stream by stream, as `segments` say."""

    slot: str
    vectors: Vectors
    segments: list[_Segment]


@dataclass(frozen=True)
class _Scored:
    """The windows of one bundle in a micro-batch and, per stream segment, its rows [start, stop) of `table`."""

    slot: Slot
    table: WindowTable
    spans: list[tuple[str, int, int]]


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
        metrics.streams.watch(self._readings)

    def _readings(self) -> list[StreamReading]:
        """The per-stream gauges' values (called on the HTTP server's thread: reads a snapshot of the streams)."""
        slots = self._slots
        return [
            StreamReading(name, slots[state.slot].bundle.name, state.last_score, state.last_threshold,
                          state.last_ts_s if state.samples else None)
            for name, state in list(self._streams.items())
        ]  # fmt: skip

    @property
    def streams(self) -> dict[str, StreamState]:
        return self._streams

    @property
    def bundles(self) -> dict[str, Bundle]:
        return {name: slot.bundle for name, slot in self._slots.items()}

    # -- the micro-batch -------------------------------------------------------------------------------------

    def process(self, records: Sequence[Record | SampleRows]) -> list[WindowScore]:
        """Run one micro-batch; returns the window scores it produced."""
        return self.process_batch(records).windows

    def process_batch(self, items: Sequence[Record | SampleRows], *, arrival_s: float | None = None) -> BatchResult:
        """Run one micro-batch: dead letters and alerts are sent (and acknowledged) before this returns.

        Items are pushed in order. SampleRows blocks take the columnar lane (all their streams windowed in one
        numpy pass) wherever a stream's rows are plain: in order, finite, no restart-sized gap, channels as the
        bundle's; other rows and records go record by record, and consecutive in-order sensor records of one stream
        as one block. Every lane gives the same vectors as pushing the records one by one."""
        sizes = [len(item) if isinstance(item, SampleRows) else 1 for item in items]
        self._metrics.records.inc(sum(sizes))
        progress = Progress(sum(sizes))
        letters: list[DeadLetter] = []
        pushed: list[_Pushed] = []
        records: list[tuple[int, Record]] = []
        row = 0
        for item, size in zip(items, sizes, strict=True):
            if isinstance(item, SampleRows):
                letters += self._push_records(records, pushed, progress)
                records = []
                letters += self._push_rows(item, row, pushed, progress)
            else:
                records.append((row, item))
            row += size
        letters += self._push_records(records, pushed, progress)
        if letters:
            self._send_dead_letters(letters)
        return self._finish(pushed, progress, arrival_s)

    def _push_records(
        self, records: Sequence[tuple[int, Record]], pushed: list[_Pushed], progress: Progress
    ) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        by_stream: dict[str, list[tuple[int, _Prepared]]] = {}
        for row, record in records:
            try:
                by_stream.setdefault(record.stream, []).append((row, self._prepare(record)))
            except (RecordError, DataError) as exc:
                letters.append(_dead_letter(record, exc))
        originals = dict(records)
        for items in by_stream.values():
            for run in self._runs(items):
                letters += self._push_run(run, originals, pushed, progress)
        return letters

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
        self, run: list[tuple[int, _Prepared]], records: Mapping[int, Record], pushed: list[_Pushed], progress: Progress
    ) -> list[DeadLetter]:
        if len(run) > 1 and self._fresh(run[0][1]):
            try:
                self._push_block(run, pushed, progress)
                return []
            except (RecordError, DataError):
                pass  # the feature stream refused the block unchanged: find the bad records one by one
        letters = []
        for row, item in run:
            try:
                item_pushed, position = self._push(item)
                pushed.append(item_pushed)
                if position is not None:
                    progress.set(row, position)
            except (RecordError, DataError) as exc:
                letters.append(_dead_letter(records[row], exc))
        return letters

    def _fresh(self, item: _Prepared) -> bool:
        state = self._streams.get(item.stream)
        return state is None or (not isinstance(item.ts_s, float) and float(item.ts_s[0]) > state.last_ts_s)

    def _push_block(self, run: list[tuple[int, _Prepared]], pushed: list[_Pushed], progress: Progress) -> None:
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
        for row, item in run:
            remaining -= len(item.samples)
            progress.set(row, RecordPosition(block.stream, position.generation, position.last_sample - remaining))

    # -- the columnar lane ---------------------------------------------------------------------------------------

    def _push_rows(
        self, rows: SampleRows, first_row: int, pushed: list[_Pushed], progress: Progress
    ) -> list[DeadLetter]:
        """Push a SampleRows block: plain streams of each sensor bundle in one pass, the others record by record."""
        groups: dict[str, list[int]] = {}
        for i, stream in enumerate(rows.streams):
            groups.setdefault(stream, []).append(i)
        lanes: dict[str, list[tuple[str, list[int]]]] = {}
        columns: dict[str, IntArray | None] = {}
        slow: list[int] = []
        for stream, indices in groups.items():
            slot = self._router.slot_for(stream, rows.tags_of(indices[0]) if rows.tags else None)
            if slot is not None and slot not in columns:
                columns[slot] = self._column_order(slot, rows.channels)
            if slot is not None and columns[slot] is not None:
                lanes.setdefault(slot, []).append((stream, indices))
            else:
                slow += indices
        for slot, lane in lanes.items():
            order = columns[slot]
            assert order is not None  # lanes only hold slots with a column order
            slow += self._push_lane(slot, lane, rows, order, first_row, pushed, progress)
        records = [(first_row + i, rows.record(i)) for i in sorted(slow)]
        return self._push_records(records, pushed, progress)

    def _column_order(self, slot: str, channels: tuple[str, ...]) -> IntArray | None:
        """Where each of the bundle's channels is in `channels`; None when the lane cannot take these rows (not a
        sensor bundle, or other channel names: the record path dead-letters them with the reason)."""
        bundle = self._slots[slot].bundle
        names = bundle.extractor.group_names
        if bundle.features.kind != "sensor" or len(set(channels)) != len(channels) or set(channels) != set(names):
            return None
        return np.array([channels.index(name) for name in names], dtype=np.int64)

    def _push_lane(self, slot: str, lane: list[tuple[str, list[int]]], rows: SampleRows, columns: IntArray,
                   first_row: int, pushed: list[_Pushed], progress: Progress) -> list[int]:  # fmt: skip
        """Push the plain streams of `lane` (all routed to `slot`) in one pass, channels in the bundle's order;
        returns the rows left for the record-by-record path (streams with late, missing or gap-separated samples)."""
        order = np.fromiter((i for _, indices in lane for i in indices), dtype=np.int64, count=-1)
        counts = np.array([len(indices) for _, indices in lane])
        ts, values = rows.ts_s[order], rows.values[np.ix_(order, columns)]
        plain = self._plain_streams(lane, ts, values, counts)
        if not plain.all():
            keep = np.repeat(plain, counts)
            order, ts, values = order[keep], ts[keep], values[keep]
            lane_rest = [indices for (_, indices), ok in zip(lane, plain.tolist(), strict=True) if not ok]
            lane, counts = [entry for entry, ok in zip(lane, plain.tolist(), strict=True) if ok], counts[plain]
        else:
            lane_rest = []
        if lane:
            self._push_plain(slot, [stream for stream, _ in lane], ts, values, counts, first_row + order, pushed,
                             progress)  # fmt: skip
        return [i for indices in lane_rest for i in indices]

    def _plain_streams(self, lane: list[tuple[str, list[int]]], ts: F64, values: F64,
                       counts: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:  # fmt: skip
        """Per stream of the lane: are its rows finite, newer than what it has seen, and without a long gap?"""
        starts = np.cumsum(counts) - counts
        last_seen, limit = np.empty(len(lane)), np.full(len(lane), float(self._max_gap_s))
        for k, (stream, _) in enumerate(lane):
            state = self._streams.get(stream)
            last_seen[k] = -np.inf if state is None or not state.samples else state.last_ts_s
            if state is None or not state.samples:
                limit[k] = np.inf
        previous = np.empty_like(ts)
        previous[1:] = ts[:-1]
        previous[starts] = last_seen
        step = ts - previous
        allowed = np.full(len(ts), float(self._max_gap_s))
        allowed[starts] = limit
        ok = np.isfinite(values).all(axis=1) & (step > 0) & (step <= allowed)
        return np.logical_and.reduceat(ok, starts)

    def _push_plain(self, slot_name: str, streams: list[str], ts: F64, values: F64, counts: npt.NDArray[np.int64],
                    rows: npt.NDArray[np.int64], pushed: list[_Pushed], progress: Progress) -> None:  # fmt: skip
        states = [self._streams.get(stream) or self._new_state(stream, slot_name) for stream in streams]
        features = [state.features for state in states]
        assert all(isinstance(f, SensorStream) for f in features)  # a sensor bundle's streams (_columnar)
        before = np.array([state.samples for state in states], dtype=np.int64)
        vectors, made = push_many(features, values, counts.tolist())  # type: ignore[arg-type]
        now, row = self._clock(), 0
        for state, n in zip(states, counts.tolist(), strict=True):
            state.seen_wall_s = now
            state.samples += n
            state.ts = np.concatenate((state.ts, ts[row : row + n]))
            row += n
            state.last_ts_s = float(state.ts[-1])
        self._metrics.samples.inc(len(ts))
        starts = np.cumsum(counts) - counts
        last_samples = np.repeat(before - starts, counts) + np.arange(len(ts))
        progress.set_rows(rows, streams, counts.tolist(), [state.generation for state in states], last_samples)
        segments = [_Segment(stream, state, m) for stream, state, m in zip(streams, states, made, strict=True) if m]
        if segments:
            pushed.append(_Pushed(slot_name, vectors, segments))

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
            self._router.forget(name)
            if state is not None:
                self._metrics.evicted.labels(reason).inc()
                self._metrics.forget_stream(name)
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
        slot_name = self._router.slot_for(record.stream, record.tags)
        if slot_name is None:
            raise RecordError(
                f"no route matches stream {record.stream!r} (tags {dict(record.tags)})", reason="no_route"
            )
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
            return _Pushed(state.slot, Vectors.empty(1), []), None
        first_ts, last_ts = self._span(item)
        if state.samples and first_ts - state.last_ts_s > self._max_gap_s:
            log.info("stream %s: gap of %.1f s, restarting its windows", item.stream, first_ts - state.last_ts_s)
            state = self._restart(item.stream, state)
        vectors = state.features.push(item.samples)
        self._note_times(state, item, last_ts)
        self._metrics.samples.inc(len(item.samples))
        segments = [_Segment(item.stream, state, len(vectors))] if len(vectors) else []
        return _Pushed(state.slot, vectors, segments), RecordPosition(item.stream, state.generation, state.samples - 1)

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

    def flush(self) -> list[WindowScore]:
        """End of input: emit what the streams hold back (audio end padding), as a last micro-batch."""
        pushed = []
        for name, state in self._streams.items():
            vectors = state.features.flush()
            if len(vectors):
                pushed.append(_Pushed(state.slot, vectors, [_Segment(name, state, len(vectors))]))
        return self._finish(pushed, Progress(0), None).windows

    def run(self, source: Source, *, max_records: int = 256) -> int:
        """Consume `source` until it is exhausted; returns the number of windows scored."""
        scored = 0
        while not source.exhausted:
            scored += self.process_batch(source.poll(max_records=max_records)).window_count
        return scored + len(self.flush())

    def _finish(self, pushed: list[_Pushed], progress: Progress, arrival_s: float | None) -> BatchResult:
        scored = self._score(pushed)
        for state in {id(seg.state): seg.state for p in pushed for seg in p.segments}.values():
            self._trim_times(state)
        if arrival_s is not None and scored:
            self._metrics.record_latency.observe(max(0.0, self._clock() - arrival_s))
        alerts = self._decide(scored)
        if alerts:
            self._alerts.send(alerts)
        self._update_gauges(scored, alerts)
        return BatchResult([s.table for s in scored], alerts, progress)

    def _score(self, pushed: list[_Pushed]) -> list[_Scored]:
        by_slot: dict[str, list[_Pushed]] = {}
        for item in pushed:
            if item.segments:
                by_slot.setdefault(item.slot, []).append(item)
        return [self._score_slot(self._slots[name], items) for name, items in by_slot.items()]

    def _score_slot(self, slot: Slot, items: list[_Pushed]) -> _Scored:
        started = time.perf_counter()
        data = np.concatenate([item.vectors.data for item in items]) if len(items) > 1 else items[0].vectors.data
        scores = slot.scorer.score(data)
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        segments = [seg for item in items for seg in item.segments]
        first = np.concatenate([item.vectors.first_sample for item in items])
        end = np.concatenate([item.vectors.end_sample for item in items])
        if self._codes is not None or self._cleaned is not None:
            self._vector_outputs(slot, segments, data, first, end)
        if slot.plan == (1, 1):
            scored = self._vector_windows(slot, segments, scores, first, end)
        else:
            scored = self._grouped_windows(slot, segments, scores, first, end)
        if slot.online is not None:
            scored = _Scored(slot, _with_thresholds(scored.table, slot.online), scored.spans)
        if slot.drift is not None:
            slot.drift.observe_many(scored.table.score.tolist())
        return scored

    def _vector_windows(self, slot: Slot, segments: list[_Segment], scores: VectorScores, first: IntArray,
                        end: IntArray) -> _Scored:  # fmt: skip
        """Each vector is a window (sensors): every column of the table in one vectorised step."""
        start_s, end_s = self._vector_times(slot.bundle, segments, first, end)
        totals = scores.group_errors.sum(axis=1, keepdims=True)
        shares = np.divide(scores.group_errors, totals, out=np.zeros_like(scores.group_errors), where=totals > 0)
        names: list[str] = []
        spans, row = [], 0
        for seg in segments:
            names += [seg.stream] * seg.count
            spans.append((seg.stream, row, row + seg.count))
            row += seg.count
            seg.state.warming = False
            seg.state.last_window_start = int(first[row - 1])
        threshold = np.full(len(names), slot.bundle.threshold)
        table = WindowTable(slot.bundle.name, names, start_s, end_s, scores.errors, threshold, shares)
        return _Scored(slot, table, spans)

    def _grouped_windows(self, slot: Slot, segments: list[_Segment], scores: VectorScores, first: IntArray,
                         end: IntArray) -> _Scored:  # fmt: skip
        """Windows of several vectors (audio), per stream through its WindowAggregator."""
        windows: list[WindowScore] = []
        spans, offset = [], 0
        for seg in segments:
            part = scores.slice(offset, offset + seg.count)
            made = seg.state.windows.push(part, first[offset : offset + seg.count], end[offset : offset + seg.count])
            offset += seg.count
            spans.append((seg.stream, len(windows), len(windows) + len(made)))
            windows += [self._window_score(seg.stream, seg.state, slot.bundle, window) for window in made]
        return _Scored(slot, _table(slot.bundle, windows), spans)

    def _vector_times(self, bundle: Bundle, segments: list[_Segment], first: IntArray,
                      end: IntArray) -> tuple[F64, F64]:  # fmt: skip
        """Epoch seconds of each vector's start and end (one sample period after its last sample), in one pass
        over all segments: sensors look their samples' timestamps up, audio counts from the stream's origin."""
        counts = np.array([seg.count for seg in segments])
        if bundle.features.kind == "logmel":
            rate = bundle.features.logmel.sample_rate_hz
            origin = np.repeat([seg.state.origin_s for seg in segments], counts)
            return origin + first / rate, origin + end / rate
        times = [seg.state.ts for seg in segments]
        sizes = np.array([len(t) for t in times])
        base = np.repeat(np.cumsum(sizes) - sizes - np.array([seg.state.ts_base for seg in segments]), counts)
        ts = np.concatenate(times)
        return ts[base + first], ts[base + end - 1] + bundle.features.sensor.sample_period_s

    def _vector_outputs(self, slot: Slot, segments: list[_Segment], data: npt.NDArray[np.float32],
                        first: IntArray, end: IntArray) -> None:  # fmt: skip
        bundle = slot.bundle
        start_s, end_s = self._vector_times(bundle, segments, first, end)
        spans = list(zip([s.stream for s in segments for _ in range(s.count)], start_s.tolist(), end_s.tolist(),
                         strict=True))  # fmt: skip
        if self._codes is not None:
            codes = slot.scorer.encode(data).tolist()
            self._codes([VectorCode(stream, bundle.name, bundle.version, start, stop, tuple(code))
                         for (stream, start, stop), code in zip(spans, codes, strict=True)])  # fmt: skip
        if self._cleaned is not None:
            self._cleaned(self._cleaned_windows(slot, spans, slot.scorer.reconstruct(data)))

    def _cleaned_windows(self, slot: Slot, spans: list[tuple[str, float, float]],
                         recon: npt.NDArray[np.float32]) -> list[CleanedWindow]:  # fmt: skip
        bundle, unscale = slot.bundle, _unscaler(slot.bundle)
        out = []
        for (stream, start, end), row in zip(spans, recon, strict=True):
            values = unscale(row) if unscale is not None else {}
            vector = () if values else tuple(row.tolist())
            out.append(CleanedWindow(stream, bundle.name, bundle.version, start, end, values, vector))
        return out

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

    def _decide(self, scored: list[_Scored]) -> list[Alert]:
        alerts: list[Alert] = []
        now = self._clock()
        for part in scored:
            table, policy = part.table, part.slot.policy
            spans = [span for span in part.spans if span[2] > span[1]]
            if not spans:
                continue
            starts = np.array([start for _, start, _ in spans])
            # Whether each span holds an anomalous window, for all spans in one call (they tile the table).
            anomalous = np.logical_or.reduceat(
                table.score[starts[0] :] > table.threshold[starts[0] :], starts - starts[0]
            )
            for (stream, start, stop), any_anomalous in zip(spans, anomalous.tolist(), strict=True):
                state = self._streams.get(stream)
                if state is None:
                    continue  # evicted for capacity later in the same batch; its next record starts it again
                if not any_anomalous and policy.skip_quiet(
                    state.alert, stop - start, first_end_s=float(table.end_s[start]),
                    last_end_s=float(table.end_s[stop - 1]),
                ):  # fmt: skip
                    continue  # the common case: a quiet stream stays quiet
                alerts += self._decide_windows(state, policy, table.rows(start, stop), now)
        return alerts

    def _decide_windows(self, state: StreamState, policy: AlertPolicy, windows: list[WindowScore],
                        now: float) -> list[Alert]:  # fmt: skip
        alerts: list[Alert] = []
        for window in windows:
            new = policy.update(state.alert, window, now_s=now)
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
        self._metrics.score_hist.labels(bundle.name)
        self._metrics.threshold.labels(bundle.name).set(bundle.threshold)
        self._metrics.bundle_info.labels(bundle.name, bundle.version).set(1)

    def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        self._dead.send(letters)
        for letter in letters:
            self._metrics.dead_letters.labels(letter.reason).inc()

    def _update_gauges(self, scored: list[_Scored], alerts: list[Alert]) -> None:
        for part in scored:
            table = part.table
            bundle = table.bundle
            scores, thresholds = table.score.tolist(), table.threshold.tolist()
            for stream, start, stop in part.spans:
                state = self._streams.get(stream)
                if stop > start and state is not None:
                    state.last_score, state.last_threshold = scores[stop - 1], thresholds[stop - 1]
            self._metrics.windows.labels(bundle).inc(len(table))
            self._metrics.score_hist.observe_many(table.score / table.threshold, bundle)
        for alert in alerts:
            self._metrics.alerts.labels(alert.bundle_name, alert.status).inc()
            self._metrics.firing.labels(alert.stream).set(1 if alert.status == "firing" else 0)
        self._metrics.streams_active.set(len(self._streams))
        self._metrics.streams_warming.set(sum(s.warming for s in self._streams.values()))


def _table(bundle: Bundle, windows: list[WindowScore]) -> WindowTable:
    groups = len(bundle.extractor.group_names)
    return WindowTable(
        bundle.name,
        [w.stream for w in windows],
        np.array([w.start_s for w in windows], dtype=np.float64),
        np.array([w.end_s for w in windows], dtype=np.float64),
        np.array([w.score for w in windows], dtype=np.float64),
        np.array([w.threshold for w in windows], dtype=np.float64),
        np.array([w.contributions for w in windows], dtype=np.float64).reshape(len(windows), groups),
    )


def _with_thresholds(table: WindowTable, online: OnlineThresholds) -> WindowTable:
    """The table with each window judged against the live DSPOT threshold of its stream, window by window."""
    thresholds = np.array([online(window).threshold for window in table.rows()], dtype=np.float64)
    return replace(table, threshold=thresholds)


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
    return DeadLetter(source=record.stream, reason=reason, message=str(exc), payload=record_payload(record))
