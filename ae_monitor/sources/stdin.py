"""JSON Lines source: sensor records, one JSON object per line (the Kafka record format), from stdin or a file.

`stream` must be in each object (there is no Kafka key). Lines that do not decode are handed to `on_dead_letter`
with their reason and line number, and consumption goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import IO

from ae_monitor.errors import RecordError
from ae_monitor.records import DeadLetter, Record
from ae_monitor.sources.decode import decode_message


class JsonLinesSource:
    """Reads records line by line; blank lines are skipped."""

    def __init__(self, stream: IO[str], *, on_dead_letter: Callable[[DeadLetter], None], name: str = "stdin",
                 tags: Sequence[str] = ()) -> None:  # fmt: skip
        self._stream, self._on_dead_letter, self._name = stream, on_dead_letter, name
        self._tags = tuple(tags)  # routing fields to keep (see decode_message)
        self._line = 0
        self._done = False

    @property
    def exhausted(self) -> bool:
        return self._done

    def poll(self, *, max_records: int) -> list[Record]:
        records: list[Record] = []
        while len(records) < max_records:
            line = self._stream.readline()
            if not line:
                self._done = True
                break
            self._line += 1
            if line.strip():
                self._decode(line, records)
        return records

    def close(self) -> None:
        self._done = True

    def _decode(self, line: str, records: list[Record]) -> None:
        try:
            records.append(decode_message(None, line.encode("utf-8"), (), tags=self._tags))
        except RecordError as exc:
            letter = DeadLetter(f"{self._name}:{self._line}", exc.reason, str(exc), line.rstrip("\n"))
            self._on_dead_letter(letter)
