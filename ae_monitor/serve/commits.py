"""Commit bookkeeping: which offsets of which partitions may be committed, and which streams each partition owns.

A record's offset may be committed once every window containing its samples was scored (or never will be: the
stream restarted or was dropped), its alerts were handed to the delivery queue and its outputs settled. One entry per
partition and poll is kept, marked with the newest position of each of its streams (`Progress.latest`): once those
are done, the whole chunk is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ae_monitor.engine import Progress, RecordPosition
from ae_monitor.sources.kafka import Chunk, Partition
from ae_monitor.sources.offsets import OffsetTracker


class CommitBook:
    """Offsets waiting for their windows, and the streams seen on each partition (dropped when it is revoked)."""

    def __init__(self) -> None:
        self._tracker: OffsetTracker[list[RecordPosition]] = OffsetTracker()
        self._streams: dict[Partition, set[str]] = {}

    def add(self, chunks: Iterable[Chunk], progress: Progress) -> None:
        """Note where each polled chunk's records landed."""
        for chunk in chunks:
            partition = (chunk.topic, chunk.partition)
            newest = progress.latest(chunk.first_row, chunk.end_row)
            self._tracker.add(partition, chunk.last_offset, newest or None)
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

    def committable(self, is_done: Callable[[RecordPosition], bool], *, every: bool) -> dict[Partition, int]:
        """Per partition, the offset to commit: past the longest prefix of polls whose records are all done."""
        return self._tracker.committable(lambda positions: all(is_done(p) for p in positions), every=every)
