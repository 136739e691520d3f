"""The source interface: where records come from (Kafka, file replay, stdin, memory).

`poll` returns up to `max_records` records, blocking at most as long as the source's pacing requires; an empty list
means nothing is available right now. `exhausted` turns true once a finite source has nothing more to give.
"""

from __future__ import annotations

from typing import Protocol

from ae_monitor.records import Record


class Source(Protocol):
    @property
    def exhausted(self) -> bool: ...

    def poll(self, *, max_records: int) -> list[Record]: ...

    def close(self) -> None: ...
