"""At-least-once bookkeeping: which offset of each partition may be committed.

Records are added in consumption order with a completion test. A partition's committable offset is one past the
longest prefix of its records that are complete, so a record still waiting for its windows (or behind one that is)
is never committed past. Pure logic, no Kafka: the Kafka source feeds it and commits what it returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

Marker = TypeVar("Marker")
TopicPartition = tuple[str, int]


class OffsetTracker(Generic[Marker]):
    """Per-partition queues of (offset, marker); `marker` None means complete already."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[tuple[int, Marker | None]]] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, partition: TopicPartition, offset: int, marker: Marker | None) -> None:
        self._pending.setdefault(partition, deque()).append((offset, marker))

    def committable(
        self,
        is_done: Callable[[Marker], bool],
        *,
        every: bool = False,
        done_below: Callable[[Marker], int | None] | None = None,
    ) -> dict[TopicPartition, int]:
        """Offsets (next to read) that advanced since the last call, popping the completed prefixes; with `every`,
        the committable offset of every partition seen (to re-send after commits that may have failed).

        `done_below(marker)`, when given, looks inside the first entry that is not complete: the offset of its
        first record that is not done (so a partly complete poll commits its done prefix), or None."""
        advanced = {}
        for partition, queue in self._pending.items():
            next_offset = -1
            while queue and (queue[0][1] is None or is_done(queue[0][1])):
                next_offset = queue.popleft()[0] + 1
            head = queue[0][1] if queue else None
            if done_below is not None and head is not None:
                next_offset = max(next_offset, done_below(head) or -1)
            if next_offset > self._committed.get(partition, -1):
                advanced[partition] = self._committed[partition] = next_offset
        return dict(self._committed) if every else advanced

    def pending(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the bookkeeping of partitions this process no longer owns."""
        for partition in partitions:
            self._pending.pop(partition, None)
            self._committed.pop(partition, None)
