"""Commit bookkeeping: which offsets of which partitions may be committed, and which streams each partition owns.

A record's offset may be committed once every window containing its samples was scored (or never will be: the
stream restarted or was dropped), its alerts were handed to the delivery queue and its outputs settled. One entry per
partition and poll is kept, marked with the newest position of each of its streams (`Progress.latest`): once those
are done, the whole chunk is. The oldest chunk that is not done yet is looked into row by row, so its done prefix is
committed too (after a backlog, a big last poll would otherwise stay uncommitted behind a few open windows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ae_monitor.engine import Progress, RecordPosition
from ae_monitor.sources.kafka import Chunk, Partition
from ae_monitor.sources.offsets import OffsetTracker


@dataclass(frozen=True)
class _ChunkRows:
    """One partition's rows of a poll: where they landed (`progress` rows [first, end)) and their offsets."""

    progress: Progress
    first: int
    end: int
    offsets: npt.NDArray[np.int64] | None
    newest: list[RecordPosition]


DoneMarks = Callable[[Sequence[str]], tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]


class CommitBook:
    """Offsets waiting for their windows, and the streams seen on each partition (dropped when it is revoked)."""

    def __init__(self) -> None:
        self._tracker: OffsetTracker[_ChunkRows] = OffsetTracker()
        self._streams: dict[Partition, set[str]] = {}

    def add(self, chunks: Iterable[Chunk], progress: Progress) -> None:
        """Note where each polled chunk's records landed."""
        for chunk in chunks:
            partition = (chunk.topic, chunk.partition)
            newest = progress.latest(chunk.first_row, chunk.end_row)
            rows = _ChunkRows(progress, chunk.first_row, chunk.end_row, chunk.row_offsets, newest)
            self._tracker.add(partition, chunk.last_offset, rows if newest else None)
            self._streams.setdefault(partition, set()).update(p.stream for p in newest)

    def release(self, partitions: Iterable[Partition]) -> list[str]:
        """Forget revoked or lost partitions; returns the streams they carried (sorted)."""
        partitions = list(partitions)
        streams = sorted({s for p in partitions for s in self._streams.pop(p, set())})
        self._tracker.forget(partitions)
        return streams

    def forget_streams(self, names: Iterable[str]) -> None:
        """Streams dropped by the engine (idle eviction) no longer belong to any partition."""
        dropped = set(names)
        for streams in self._streams.values():
            streams -= dropped

    def committable(self, is_done: Callable[[RecordPosition], bool], *, every: bool,
                    done_marks: DoneMarks | None = None) -> dict[Partition, int]:  # fmt: skip
        """Per partition, the offset to commit: past the longest prefix of records that are all done."""
        return self._tracker.committable(
            lambda rows: all(is_done(p) for p in rows.newest),
            every=every,
            done_below=None if done_marks is None else lambda rows: _first_undone_offset(rows, done_marks),
        )


def _first_undone_offset(rows: _ChunkRows, done_marks: DoneMarks) -> int | None:
    if rows.offsets is None:
        return None
    ids = rows.progress.stream[rows.first : rows.end]
    present = np.unique(ids[ids >= 0])
    names = rows.progress.names
    generations = np.full(len(names), -1, dtype=np.int64)
    marks = np.full(len(names), np.iinfo(np.int64).max, dtype=np.int64)
    generations[present], marks[present] = done_marks([names[i] for i in present.tolist()])
    done = rows.progress.done(rows.first, rows.end, generations, marks)
    undone = np.flatnonzero(~done)
    return int(rows.offsets[undone[0]]) if len(undone) else None
