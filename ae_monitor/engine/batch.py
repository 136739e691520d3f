"""The forms one micro-batch takes on its way through the engine, and what comes out of it.

    items (Record | SampleRows)
      -> Admitted   one record's samples, checked and routed to a bundle (ingest)
      -> Pushed     the vectors one push made for one bundle, stream by stream as `Segment`s say (ingest;
                    both defined in engine.streams, beside the stream state they point to)
      -> Scored     one bundle's windows of the batch as a WindowTable, with each segment's rows (windows)
      -> BatchResult  windows, alerts, dead letters, codes, cleaned windows, changed alert states, positions

`Progress` records where each input row's samples landed (`RecordPosition`), so the caller can commit a row's
offset once every window containing it was scored (`Engine.is_done`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.engine.slots import Slot
from ae_monitor.engine.streams import RecordPosition
from ae_monitor.features.clock import Stamp
from ae_monitor.records import Alert, CleanedWindow, DeadLetter, VectorCode, WindowScore, WindowTable


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

    @property
    def names(self) -> list[str]:
        """Stream names by the ids in `stream`."""
        return self._names

    def done(self, start: int, stop: int, generations: npt.NDArray[np.int64],
             marks: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:  # fmt: skip
        """Whether each row of [start, stop) is done, given per stream id its generation and first sample not yet
        done (Engine.done_marks over `names`)."""
        ids = self.stream[start:stop]
        if not len(generations):
            return np.ones(len(ids), dtype=bool)
        known = ids >= 0
        safe = np.where(known, ids, 0)
        current = self.generation[start:stop] == generations[safe]
        undone: npt.NDArray[np.bool_] = known & current & (self.last_sample[start:stop] >= marks[safe])
        return ~undone

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
class Admitted:
    """One record's samples, admitted to stream `stream` and routed to bundle slot `slot`."""

    stream: str
    slot: str
    samples: npt.NDArray[np.floating]
    stamp: Stamp


@dataclass(frozen=True)
class Scored:
    """The windows of one bundle in a micro-batch and, per stream segment, its rows [start, stop) of `table`."""

    slot: Slot
    table: WindowTable
    spans: list[tuple[str, int, int]]


@dataclass(frozen=True)
class BatchResult:
    """Everything one micro-batch produced; delivering it is the caller's business (serve.outputs.deliver)."""

    tables: list[WindowTable]
    alerts: list[Alert]
    progress: Progress
    dead_letters: list[DeadLetter] = field(default_factory=list)
    codes: list[VectorCode] = field(default_factory=list)
    cleaned: list[CleanedWindow] = field(default_factory=list)
    alert_states: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # changed ones, by stream

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
