"""The engine: one micro-batch in, one `BatchResult` out, no I/O.

Per-stream state (feature buffers, window grouping, stream clock, alert state) lives in a table keyed by stream id,
so a process that owns a set of Kafka partitions owns exactly the state of their streams. One `process` call is one
micro-batch: ingest (engine.ingest) turns the items into vectors per bundle, each bundle scores its vectors in one
batched pass (engine.windows), and the alert policy decides (engine.decide). Delivering what comes out is the
caller's business: `serve.outputs.deliver` does it for the daemon, replay and the demo alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.config import AlertingConfig, CalibrationConfig, DriftConfig, RouteConfig, StreamsConfig
from ae_monitor.drift import DriftWatch
from ae_monitor.engine.batch import BatchResult, Progress, Scored
from ae_monitor.engine.decide import decide
from ae_monitor.engine.grouped import ModelGroups
from ae_monitor.engine.ingest import Ingest
from ae_monitor.engine.routing import Router
from ae_monitor.engine.slots import Slot
from ae_monitor.engine.streams import Pushed, RecordPosition, Segment, StreamState, StreamTable
from ae_monitor.engine.windows import VectorOutputs, score_slot, vectors_of
from ae_monitor.metrics import Metrics, StreamReading
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import Alert, DeadLetter, Record, SampleRows


def own_slot_name(stream: str) -> str:
    """The slot of a stream's own bundle; no route's slot looks like it (theirs are bundle paths or aliases)."""
    return f"own:{stream}"


class Engine:
    """Scores micro-batches of records with one or more bundles; returns windows, alerts and dead letters."""

    def __init__(
        self,
        bundles: Bundle | Mapping[str, Bundle],
        *,
        alerting: AlertingConfig,
        metrics: Metrics,
        routes: Sequence[tuple[RouteConfig, str]] = (),
        streams: StreamsConfig | None = None,
        drift: DriftConfig | None = None,
        online: CalibrationConfig | None = None,
        codes: bool = False,
        cleaned: bool = False,
        max_gap_s: float = 10.0,
        batch_size: int = 1024,
        group_models: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        named = {bundles.name: bundles} if isinstance(bundles, Bundle) else dict(bundles)
        self._alerting, self._batch_size, self._drift = alerting, batch_size, drift or DriftConfig()
        self._online, self._want_codes, self._want_cleaned = online, codes, cleaned
        self._metrics, self._clock, self._max_gap_s = metrics, clock, max_gap_s
        # Slots of one architecture (per-stream learned models) score in one call per micro-batch (engine.grouped).
        self._groups = ModelGroups(max_rows=batch_size) if group_models else None
        self._slots = {name: self._slot(bundle) for name, bundle in named.items()}
        self._router = Router(routes or [(RouteConfig(bundle_path=""), next(iter(named)))])
        self._streams = StreamTable(streams or StreamsConfig(), on_drop=self._dropped)
        self._ingest = Ingest(slots=self._slots, router=self._router, streams=self._streams, metrics=metrics,
                              max_gap_s=max_gap_s, clock=clock)  # fmt: skip
        for slot in self._slots.values():
            self._publish_bundle(slot.bundle)
        metrics.streams.watch(self._readings)

    @property
    def streams(self) -> dict[str, StreamState]:
        return self._streams.states

    @property
    def bundles(self) -> dict[str, Bundle]:
        return {name: slot.bundle for name, slot in self._slots.items()}

    # -- the micro-batch -----------------------------------------------------------------------------------------

    def process(self, items: Sequence[Record | SampleRows], *, arrival_s: float | None = None) -> BatchResult:
        """Run one micro-batch. Items are pushed in order; every lane gives the vectors of pushing the records one
        by one (see engine.ingest). `arrival_s`: when the batch was polled, for the record latency histogram."""
        rows = sum(len(item) if isinstance(item, SampleRows) else 1 for item in items)
        self._metrics.records.inc(rows)
        progress = Progress(rows)
        pushed, letters = self._ingest.items(items, progress)
        return self._finish(pushed, progress, arrival_s, letters)

    def flush(self) -> BatchResult:
        """End of input: what the streams hold back (audio end padding), as a last micro-batch."""
        pushed = []
        for name, state in self._streams.states.items():
            vectors = state.features.flush()
            if len(vectors):
                pushed.append(Pushed(state.slot, vectors, [Segment(name, state, len(vectors))]))
        return self._finish(pushed, Progress(0), None, [])

    def _finish(self, pushed: list[Pushed], progress: Progress, arrival_s: float | None,
                letters: list[DeadLetter]) -> BatchResult:  # fmt: skip
        outputs = VectorOutputs(want_codes=self._want_codes, want_cleaned=self._want_cleaned)
        scored = self._score(pushed, outputs)
        for state in {id(seg.state): seg.state for p in pushed for seg in p.segments}.values():
            state.clock.trim()
        if arrival_s is not None and scored:
            self._metrics.record_latency.observe(max(0.0, self._clock() - arrival_s))
        alerts = decide(scored, self._streams, metrics=self._metrics, now_s=self._clock())
        self._update_gauges(scored, alerts)
        return BatchResult([s.table for s in scored], alerts, progress, letters, outputs.codes, outputs.cleaned,
                           self._streams.take_changed_alert_states())  # fmt: skip

    def _score(self, pushed: list[Pushed], outputs: VectorOutputs) -> list[Scored]:
        by_slot: dict[str, list[Pushed]] = {}
        for item in pushed:
            if item.segments:
                by_slot.setdefault(item.slot, []).append(item)
        data = {name: vectors_of(items) for name, items in by_slot.items()}
        grouped = {}
        if self._groups is not None and len(data) > 1:
            started = time.perf_counter()
            grouped = self._groups.score({name: self._slots[name] for name in data}, data)
            if grouped:
                self._metrics.batch_seconds.observe(time.perf_counter() - started)
        return [score_slot(self._slots[name], items, data=data[name], scores=grouped.get(name),
                           metrics=self._metrics, outputs=outputs) for name, items in by_slot.items()]  # fmt: skip

    # -- streams and bundles -----------------------------------------------------------------------------------

    def is_done(self, position: RecordPosition) -> bool:
        """True once every window containing the record's samples was scored, or never will be."""
        return self._streams.is_done(position)

    def done_marks(self, names: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """`is_done` for many rows at once: per stream, its generation and first sample not yet done."""
        return self._streams.done_marks(names)

    def drop_streams(self, names: Sequence[str], *, reason: str = "revoked") -> None:
        """Forget streams (their partitions moved to another process); their new owner warms up."""
        for name in names:
            self._router.forget(name)
        for slot in self._slots.values():
            if slot.online is not None:
                slot.online.forget(names)
        self._streams.drop(names, reason=reason)
        self._update_gauges([], [])

    def evict_idle(self, now_wall_s: float) -> list[str]:
        """Drop streams that sent nothing for `streams.idle_eviction_s`; returns their names."""
        idle = self._streams.idle(now_wall_s)
        self.drop_streams(idle, reason="idle")
        return idle

    def release_stalled(self, now_wall_s: float) -> list[str]:
        """Streams that took no sample for longer than the restart gap no longer hold commits back (see
        StreamTable.release_stalled); returns their names."""
        return self._streams.release_stalled(now_wall_s, after_s=self._max_gap_s)

    def restore_alert_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Alert states read back after a restart; applied when each stream is next seen."""
        self._streams.restore_alert_states(states)

    def swap_bundle(self, name: str, bundle: Bundle) -> None:
        """Replace bundle `name` atomically between micro-batches. Streams keep their buffers when the features are
        unchanged (else they restart); alert episodes continue, new episodes carry the new version."""
        old = self._slots[name]
        self._slots[name] = slot = self._slot(bundle)
        self._metrics.bundle_info.labels(old.bundle.name, old.bundle.version).set(0)
        self._publish_bundle(bundle)
        if bundle.features != old.bundle.features:
            for stream, state in list(self._streams.states.items()):
                if state.slot == name:
                    self._streams.restart(stream, state, slot)

    def score_stream_with(self, stream: str, bundle: Bundle) -> None:
        """Score `stream` with a bundle of its own (per-stream learning) from its next samples on, between
        micro-batches: its windows restart (the features differ), its alert episode continues."""
        name = own_slot_name(stream)
        old = self._slots.get(name)
        if old is not None:
            self._metrics.bundle_info.labels(old.bundle.name, old.bundle.version).set(0)
        self._slots[name] = slot = self._slot(bundle)
        self._publish_bundle(bundle)
        self._router.pin(stream, name)
        state = self._streams.get(stream)
        if state is not None:
            self._streams.restart(stream, state, slot, slot_name=name)

    def release_own_bundles(self, streams: Sequence[str]) -> None:
        """Forget the bundles of their own that `streams` were scored with (their partitions moved away); drop
        `streams` first, so that no state points at them."""
        for stream in streams:
            name = self._router.unpin(stream)
            slot = None if name is None else self._slots.pop(name, None)
            if slot is not None and name is not None:
                if self._groups is not None:
                    self._groups.forget(name)
                self._metrics.bundle_info.labels(slot.bundle.name, slot.bundle.version).set(0)

    def own_drift_watch(self, stream: str) -> DriftWatch | None:
        """The drift watch of the bundle `stream` is scored with of its own (None: none, or `[drift]` is off)."""
        slot = self._slots.get(own_slot_name(stream))
        return None if slot is None else slot.drift

    def _slot(self, bundle: Bundle) -> Slot:
        return Slot(bundle, alerting=self._alerting, batch_size=self._batch_size, drift=self._drift,
                    metrics=self._metrics, online=self._online)  # fmt: skip

    def _dropped(self, stream: str, reason: str) -> None:
        self._router.forget(stream)
        self._metrics.evicted.labels(reason).inc()
        self._metrics.forget_stream(stream)

    # -- metrics -----------------------------------------------------------------------------------------------

    def _readings(self) -> list[StreamReading]:
        """The per-stream gauges' values (called on the HTTP server's thread: reads a snapshot of the streams)."""
        slots = self._slots
        return [
            StreamReading(name, slots[state.slot].bundle.name, state.last_score, state.last_threshold,
                          state.last_ts_s if state.samples else None, state.last_surprise)
            for name, state in list(self._streams.states.items())
        ]  # fmt: skip

    def _publish_bundle(self, bundle: Bundle) -> None:
        self._metrics.bundle_started(bundle.name)
        self._metrics.score_hist.labels(bundle.name)
        self._metrics.surprise_hist.labels(bundle.name)
        self._metrics.threshold.labels(bundle.name).set(bundle.threshold)
        self._metrics.bundle_info.labels(bundle.name, bundle.version).set(1)

    def _update_gauges(self, scored: list[Scored], alerts: list[Alert]) -> None:
        for part in scored:
            table = part.table
            bundle = table.bundle
            scores, thresholds = table.score.tolist(), table.threshold.tolist()
            surprises = table.surprise.tolist() if table.surprise is not None else [None] * len(table)
            for stream, start, stop in part.spans:
                state = self._streams.get(stream)
                if stop > start and state is not None:
                    state.last_score, state.last_threshold = scores[stop - 1], thresholds[stop - 1]
                    state.last_surprise = surprises[stop - 1]
            self._metrics.windows.labels(bundle).inc(len(table))
            self._metrics.score_hist.observe_many(table.score / table.threshold, bundle)
            if table.surprise is not None:
                self._metrics.surprise_hist.observe_many(table.surprise[np.isfinite(table.surprise)], bundle)
        for alert in alerts:
            self._metrics.alerts.labels(alert.bundle_name, alert.status).inc()
            self._metrics.firing.labels(alert.stream).set(1 if alert.status == "firing" else 0)
        self._metrics.streams_active.set(len(self._streams))
        self._metrics.streams_warming.set(sum(s.warming for s in self._streams.states.values()))
