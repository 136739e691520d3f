"""Stage 7, sink: JSON Lines, one JSON object per alert or dead letter, to stdout or a file, flushed after every
batch. `to_json` is also the alert text of the Kafka and webhook sinks."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ae_monitor.records import Alert, DeadLetter

# Each epoch-seconds field of an alert, and the ISO-8601 UTC field written beside it for people.
ISO_FIELDS = {"event_time_s": "event_time", "detection_time_s": "detection_time", "ends_at_s": "ends_at"}


# Alert JSON writes tail probabilities below this as 0: their exact value is in `surprise` (-log10 of it).
TINY_PROBABILITY = 1e-300


def to_json(item: Alert | DeadLetter) -> str:
    """A compact, key-sorted JSON line for `item` (tuples become lists); an alert's times also as ISO-8601 UTC."""
    data: dict[str, Any] = dataclasses.asdict(item)
    if isinstance(item, Alert):
        data["top_contributors"] = [{"name": n, "share": s} for n, s in item.top_contributors]
        data |= {iso: None if data[epoch] is None else iso_utc(data[epoch]) for epoch, iso in ISO_FIELDS.items()}
        if item.tail_probability < TINY_PROBABILITY:
            # Below any float worth printing (the floor is 2.2e-308): 0, and `surprise` says how far out it is.
            data["tail_probability"] = 0.0
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def iso_utc(epoch_s: float) -> str:
    """UTC, millisecond precision, `Z` suffix.

    >>> iso_utc(1732600000.25)
    '2024-11-26T05:46:40.250Z'
    """
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonlSink:
    """Writes each item as a JSON line to `stream` (stdout when `path` is '-')."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @classmethod
    def open(cls, path: str) -> JsonlSink:
        if path == "-":
            return cls(sys.stdout)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(Path(path).open("a", encoding="utf-8"))

    def send(self, items: Sequence[Alert | DeadLetter]) -> None:
        for item in items:
            self._stream.write(to_json(item) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream not in (sys.stdout, sys.stderr):
            self._stream.close()
