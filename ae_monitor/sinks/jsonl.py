"""JSON Lines sinks: one JSON object per alert or dead letter, to stdout or a file, flushed after every batch."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ae_monitor.records import Alert, DeadLetter


def to_json(item: Alert | DeadLetter) -> str:
    """A compact, key-sorted JSON line for `item` (tuples become lists)."""
    data: dict[str, Any] = dataclasses.asdict(item)
    if isinstance(item, Alert):
        data["top_contributors"] = [{"name": n, "share": s} for n, s in item.top_contributors]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


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
