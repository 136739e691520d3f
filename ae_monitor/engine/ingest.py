"""Ingest: the items of a micro-batch into per-stream feature vectors, in two lanes that give the same vectors.

Rules applied to each record, in order (a failed rule makes a dead letter with its reason):
  * routing: the first route whose pattern matches the stream id picks the bundle (`no_route` otherwise; a learning
    route without a bundle takes its streams' records unscored until they have a model of their own);
  * intake (features.intake): audio sample rate and channel (`sample_rate`); sensor channel names
    (`channel_mismatch`); the record's kind must be the bundle's (`wrong_kind`);
  * samples not newer than what the stream has seen are dropped and counted (`ae_monitor_late_samples_total`);
  * a gap longer than `max_gap_s` restarts the stream's windows (the stream is warming again);
  * missing values follow `features.sensor.nan_policy` (`nan_value` when it is 'reject').

The **record lane** pushes record by record, except that consecutive records of one stream that continue each
other (the stream clock's `continues`: in-order sensor samples; audio chunks that start where the last one ended)
are pushed as one block. The **columnar lane** takes SampleRows blocks: every plain stream of a
bundle (rows in order, finite, no restart-sized gap, channels as the bundle's) in one numpy pass; the other rows go
to the record lane.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from ae_monitor.engine.batch import Admitted, Progress
from ae_monitor.engine.routing import UNSCORED, Router
from ae_monitor.engine.slots import Slot
from ae_monitor.engine.streams import Pushed, RecordPosition, Segment, StreamState, StreamTable
from ae_monitor.errors import DataError, RecordError
from ae_monitor.features.intake import admit
from ae_monitor.features.sensor import SensorStream, push_many
from ae_monitor.metrics import Metrics
from ae_monitor.records import DeadLetter, IntArray, Record, SampleRows, Vectors
from ae_monitor.sources.decode import record_dead_letter

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


class Ingest:
    """Pushes records and SampleRows into the streams' feature state; collects what each push made."""

    def __init__(self, *, slots: Mapping[str, Slot], router: Router, streams: StreamTable, metrics: Metrics,
                 max_gap_s: float, clock: Callable[[], float]) -> None:  # fmt: skip
        self._slots, self._router, self._streams, self._metrics = slots, router, streams, metrics
        self._max_gap_s, self._clock = max_gap_s, clock

    def items(self, items: Sequence[Record | SampleRows], progress: Progress) -> tuple[list[Pushed], list[DeadLetter]]:
        """Push every item in order; returns the vectors made and the dead letters of records that were refused."""
        letters: list[DeadLetter] = []
        pushed: list[Pushed] = []
        records: list[tuple[int, Record]] = []
        row = 0
        for item in items:
            if isinstance(item, SampleRows):
                letters += self.records(records, pushed, progress)
                records = []
                letters += self._rows(item, row, pushed, progress)
                row += len(item)
            else:
                records.append((row, item))
                row += 1
        letters += self.records(records, pushed, progress)
        return pushed, letters

    # -- the record lane ---------------------------------------------------------------------------------------

    def records(
        self, records: Sequence[tuple[int, Record]], pushed: list[Pushed], progress: Progress
    ) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        by_stream: dict[str, list[tuple[int, Admitted]]] = {}
        for row, record in records:
            try:
                admitted = self._admit(record)
            except (RecordError, DataError) as exc:
                letters.append(record_dead_letter(record, exc))
                continue
            if admitted is not None:
                by_stream.setdefault(record.stream, []).append((row, admitted))
        originals = dict(records)
        for items in by_stream.values():
            for run in self._runs(items):
                letters += self._push_run(run, originals, pushed, progress)
        return letters

    def _admit(self, record: Record) -> Admitted | None:
        """The record checked and routed; None for a stream of a route without a bundle (nothing to score)."""
        slot_name = self._router.slot_for(record.stream, record.tags)
        if slot_name is None:
            raise RecordError(
                f"no route matches stream {record.stream!r} (tags {dict(record.tags)})", reason="no_route"
            )
        if slot_name == UNSCORED:
            return None
        bundle = self._slots[slot_name].bundle
        samples, stamp = admit(record, bundle.features, bundle.extractor.group_names)
        return Admitted(record.stream, slot_name, samples, stamp)

    def _runs(self, items: list[tuple[int, Admitted]]) -> list[list[tuple[int, Admitted]]]:
        """Split one stream's records into blocks that can be pushed together: records stamped sample by sample
        whose timestamps increase across record boundaries without a restart-sized gap."""
        runs: list[list[tuple[int, Admitted]]] = []
        for i, item in items:
            last = runs[-1][-1][1] if runs else None
            if last is not None and self._continues(last, item):
                runs[-1].append((i, item))
            else:
                runs.append([(i, item)])
        return runs

    def _continues(self, last: Admitted, item: Admitted) -> bool:
        if last.slot != item.slot or not len(last.samples) or not len(item.samples):
            return False
        rules = self._slots[item.slot].clock_rules
        return rules.continues(last.stamp, len(last.samples), item.stamp, max_gap_s=self._max_gap_s)

    def _push_run(self, run: list[tuple[int, Admitted]], records: Mapping[int, Record], pushed: list[Pushed],
                  progress: Progress) -> list[DeadLetter]:  # fmt: skip
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
                letters.append(record_dead_letter(records[row], exc))
        return letters

    def _fresh(self, item: Admitted) -> bool:
        state = self._streams.get(item.stream)
        tolerance_s = self._streams.limits.late_tolerance_s
        return state is None or state.clock.fresh(item.stamp, len(item.samples), tolerance_s=tolerance_s) is None

    def _push_block(self, run: list[tuple[int, Admitted]], pushed: list[Pushed], progress: Progress) -> None:
        first = run[0][1]
        block = Admitted(
            first.stream,
            first.slot,
            np.concatenate([item.samples for _, item in run]),
            self._slots[first.slot].clock_rules.join([item.stamp for _, item in run]),
        )
        item_pushed, position = self._push(block)
        pushed.append(item_pushed)
        assert position is not None  # the block is fresh, so no sample was dropped
        remaining = len(block.samples)
        for row, item in run:
            remaining -= len(item.samples)
            progress.set(row, RecordPosition(block.stream, position.generation, position.last_sample - remaining))

    def _push(self, item: Admitted) -> tuple[Pushed, RecordPosition | None]:
        state = self._streams.get(item.stream) or self._new_state(item.stream, item.slot)
        state.seen_wall_s = self._clock()
        item = self._drop_late(state, item)
        if len(item.samples) == 0:
            return Pushed(state.slot, Vectors.empty(1), []), None
        first_ts, _ = state.clock.span(item.stamp, len(item.samples))
        if state.samples and first_ts - state.last_ts_s > self._max_gap_s:
            log.info("stream %s: gap of %.1f s, restarting its windows", item.stream, first_ts - state.last_ts_s)
            state = self._streams.restart(item.stream, state, self._slots[state.slot])
        vectors = state.features.push(item.samples)
        state.clock.advance(item.stamp, len(item.samples))
        state.accepted_wall_s = state.seen_wall_s
        self._metrics.samples.inc(len(item.samples))
        segments = [Segment(item.stream, state, len(vectors))] if len(vectors) else []
        return Pushed(state.slot, vectors, segments), RecordPosition(item.stream, state.generation, state.samples - 1)

    def _drop_late(self, state: StreamState, item: Admitted) -> Admitted:
        count = len(item.samples)
        keep = state.clock.fresh(item.stamp, count, tolerance_s=self._streams.limits.late_tolerance_s)
        if keep is None:
            return item
        self._metrics.late_samples.inc(int(count - keep.sum()))
        if not keep.any():
            return Admitted(item.stream, item.slot, item.samples[:0], item.stamp)
        return Admitted(item.stream, item.slot, item.samples[keep], np.asarray(item.stamp)[keep])

    def _new_state(self, stream: str, slot_name: str) -> StreamState:
        return self._streams.new(stream, slot_name, self._slots[slot_name])

    # -- the columnar lane -------------------------------------------------------------------------------------

    def _rows(self, rows: SampleRows, first_row: int, pushed: list[Pushed], progress: Progress) -> list[DeadLetter]:
        """Push a SampleRows block: plain streams of each sensor bundle in one pass, the others record by record."""
        groups: dict[str, list[int]] = {}
        for i, stream in enumerate(rows.streams):
            groups.setdefault(stream, []).append(i)
        lanes: dict[str, list[tuple[str, list[int]]]] = {}
        columns: dict[str, IntArray | None] = {}
        slow: list[int] = []
        for stream, indices in groups.items():
            slot = self._router.slot_for(stream, rows.tags_of(indices[0]) if rows.tags else None)
            if slot == UNSCORED:
                continue
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
        return self.records(records, pushed, progress)

    def _column_order(self, slot: str, channels: tuple[str, ...]) -> IntArray | None:
        """Where each of the bundle's channels is in `channels`; None when the lane cannot take these rows (features
        whose streams are not sensor streams, or other channel names: the record lane dead-letters them)."""
        names = self._slots[slot].bundle.extractor.group_names
        if not self._slots[slot].stamps_each_sample:
            return None
        if len(set(channels)) != len(channels) or set(channels) != set(names):
            return None
        return np.array([channels.index(name) for name in names], dtype=np.int64)

    def _push_lane(self, slot: str, lane: list[tuple[str, list[int]]], rows: SampleRows, columns: IntArray,
                   first_row: int, pushed: list[Pushed], progress: Progress) -> list[int]:  # fmt: skip
        """Push the plain streams of `lane` (all routed to `slot`) in one pass, channels in the bundle's order;
        returns the rows left for the record lane (streams with late, missing or gap-separated samples)."""
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
                    rows: npt.NDArray[np.int64], pushed: list[Pushed], progress: Progress) -> None:  # fmt: skip
        states = [self._streams.get(stream) or self._new_state(stream, slot_name) for stream in streams]
        features = [state.features for state in states]
        assert all(isinstance(f, SensorStream) for f in features)  # a sensor bundle's streams (_column_order)
        before = np.array([state.samples for state in states], dtype=np.int64)
        vectors, made = push_many(features, values, counts.tolist())  # type: ignore[arg-type]
        now, row = self._clock(), 0
        for state, n in zip(states, counts.tolist(), strict=True):
            state.seen_wall_s = state.accepted_wall_s = now
            state.clock.advance(ts[row : row + n])
            row += n
        self._metrics.samples.inc(len(ts))
        starts = np.cumsum(counts) - counts
        last_samples = np.repeat(before - starts, counts) + np.arange(len(ts))
        progress.set_rows(rows, streams, counts.tolist(), [state.generation for state in states], last_samples)
        segments = [Segment(stream, state, m) for stream, state, m in zip(streams, states, made, strict=True) if m]
        if segments:
            pushed.append(Pushed(slot_name, vectors, segments))
