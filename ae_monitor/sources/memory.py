"""An in-memory source for tests of the pipeline logic."""

from __future__ import annotations

from collections.abc import Iterable

from ae_monitor.records import Record


class MemorySource:
    """Hands out the given records in order."""

    def __init__(self, records: Iterable[Record]) -> None:
        self._records = list(records)
        self._next = 0

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._records)

    def poll(self, *, max_records: int) -> list[Record]:
        batch = self._records[self._next : self._next + max_records]
        self._next += len(batch)
        return batch

    def close(self) -> None:
        self._next = len(self._records)
