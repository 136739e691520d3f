"""The per-stream state table: new, restarted, dropped, evicted and restored streams.

A process that owns a set of Kafka partitions owns exactly the state of their streams: dropping a partition's
streams (a rebalance) or an idle stream frees it; a stream seen again warms up anew, its alert episode restored from
what was saved (`restore_alert_states`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.alerting import StreamAlertState
from ae_monitor.config import StreamsConfig
from ae_monitor.engine.slots import Slot
from ae_monitor.features import FeatureStream
from ae_monitor.features.clock import StreamClock
from ae_monitor.records import Vectors
from ae_monitor.scoring import WindowAggregator
from ae_monitor.threshold import TrackedThresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordPosition:
    """Where a record's samples went: stream, the generation of its state (unique per state this process made:
    a restart or a re-creation after eviction starts a new one), index of its last sample."""

    stream: str
    generation: int
    last_sample: int


@dataclass
class StreamState:
    """Everything the engine keeps for one stream."""

    slot: str
    features: FeatureStream
    windows: WindowAggregator
    alert: StreamAlertState
    clock: StreamClock
    generation: int = 0
    warming: bool = True
    last_window_start: int = -1  # first sample of the newest window scored
    seen_wall_s: float = 0.0  # wall time of its newest record
    accepted_wall_s: float = 0.0  # wall time of its newest sample taken (not late)
    released_through: int = -1  # samples up to here count as done for commits (see StreamTable.release_stalled)
    alert_changed: bool = False
    last_score: float | None = None  # the newest window's, for the per-stream gauges
    last_threshold: float | None = None
    last_surprise: float | None = None
    out_of_range: bool = False  # its newest window left the training range (logged once per excursion)

    @property
    def samples(self) -> int:
        """Samples pushed since the last restart."""
        return self.clock.samples

    @property
    def last_ts_s(self) -> float:
        return self.clock.last_ts_s


@dataclass(frozen=True)
class Segment:
    """`count` consecutive vectors of one stream, made by `state` (the stream's state when they were pushed)."""

    stream: str
    state: StreamState
    count: int


@dataclass(frozen=True)
class Pushed:
    """Vectors one push made for one bundle slot: stream by stream, as `segments` say."""

    slot: str
    vectors: Vectors
    segments: list[Segment]


class StreamTable:
    """Stream states by id, bounded by `streams.max_streams` (the least recently seen is dropped for a new one)."""

    def __init__(self, limits: StreamsConfig, *, on_drop: Callable[[str, str], None]) -> None:
        self.limits = limits
        self._states: dict[str, StreamState] = {}
        self._restored: dict[str, Mapping[str, Any]] = {}
        # Sample indices start at 0 in every new state: its generation tells its positions from an older state's.
        self._generations = itertools.count()
        self._on_drop = on_drop  # (stream, reason), after a state was dropped

    @property
    def states(self) -> dict[str, StreamState]:
        return self._states

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def get(self, stream: str) -> StreamState | None:
        return self._states.get(stream)

    def new(self, stream: str, slot_name: str, slot: Slot) -> StreamState:
        """A fresh state for a stream seen for the first time (or again after it was dropped)."""
        if len(self._states) >= self.limits.max_streams:
            oldest = min(self._states, key=lambda n: self._states[n].seen_wall_s)
            self.drop([oldest], reason="capacity")
        alert = slot.policy.new_state()
        if stream in self._restored:
            alert = StreamAlertState.from_dict(self._restored.pop(stream))
            if alert.tracked_median is not None and isinstance(slot.online, TrackedThresholds):
                slot.online.seed(stream, alert.tracked_median)
        state = _fresh_state(slot_name, slot, alert, generation=next(self._generations))
        self._states[stream] = state
        return state

    def restart(self, stream: str, old: StreamState, slot: Slot, *, slot_name: str | None = None) -> StreamState:
        """New windows for a stream after a gap or a bundle with other features (or, with `slot_name`, another
        bundle); alert episodes span restarts."""
        name = old.slot if slot_name is None else slot_name
        state = _fresh_state(name, slot, old.alert, generation=next(self._generations), seen_wall_s=old.seen_wall_s)
        self._states[stream] = state
        return state

    def drop(self, names: Sequence[str], *, reason: str) -> None:
        """Forget streams. One evicted (idle or for capacity) in the middle of an episode keeps its alert state
        here, so that it continues the episode under its id when it comes back; revoked streams do not (the new
        owner reads theirs from the state topic)."""
        for name in names:
            state = self._states.pop(name, None)
            if state is None:
                continue
            if reason in ("idle", "capacity") and state.alert.episode is not None:
                self._restored[name] = state.alert.to_dict()
            self._on_drop(name, reason)

    def idle(self, now_wall_s: float) -> list[str]:
        """Streams that sent nothing for `streams.idle_eviction_s`."""
        limit = self.limits.idle_eviction_s
        return [n for n, s in self._states.items() if now_wall_s - s.seen_wall_s > limit]

    def is_done(self, position: RecordPosition) -> bool:
        """True once every window containing the record's samples was scored, or never will be."""
        state = self._states.get(position.stream)
        if state is None or state.generation != position.generation:
            return True
        return state.last_window_start > position.last_sample or position.last_sample <= state.released_through

    def done_marks(self, names: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Per stream: its generation and the first sample index not yet done (is_done for many rows at once).
        A stream without state gets generation -1 and an infinite mark: all its rows are done."""
        generations = np.full(len(names), -1, dtype=np.int64)
        marks = np.full(len(names), np.iinfo(np.int64).max, dtype=np.int64)
        for i, name in enumerate(names):
            state = self._states.get(name)
            if state is not None:
                generations[i] = state.generation
                marks[i] = max(state.last_window_start, state.released_through + 1)
        return generations, marks

    def release_stalled(self, now_wall_s: float, *, after_s: float) -> list[str]:
        """Let commits pass the samples of streams that took no sample for `after_s` (wall clock); returns them.

        Such a stream's open window needs samples that have not come: when the stream comes back more than the
        restart gap later, its windows start afresh and those samples would never be part of a window anyway. So
        commits need not wait for them (without this, one silent stream would hold back every later offset of its
        partition until idle eviction). The cost, documented: if the process stops before the stream comes back
        within the gap, the window those samples began is not scored after the restart."""
        released = []
        for name, state in self._states.items():
            pending = state.samples - 1
            if pending > max(state.released_through, state.last_window_start - 1) and (
                now_wall_s - state.accepted_wall_s > after_s
            ):
                state.released_through = pending
                released.append(name)
        return released

    def restore_alert_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Alert states read back after a restart; applied when each stream is next seen."""
        self._restored.update(states)

    def take_changed_alert_states(self) -> dict[str, dict[str, Any]]:
        """Alert states that changed since the last call (to persist them), keyed by stream."""
        changed = {}
        for name, state in self._states.items():
            if state.alert_changed:
                changed[name] = state.alert.to_dict()
                state.alert_changed = False
        return changed


def _fresh_state(slot_name: str, slot: Slot, alert: StreamAlertState, **kwargs: Any) -> StreamState:
    features = slot.bundle.extractor.stream()
    return StreamState(slot_name, features, WindowAggregator(*slot.plan), alert, slot.new_clock(), **kwargs)
