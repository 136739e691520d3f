"""In-memory sinks for tests and for callers that want the results as Python objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from ae_monitor.records import Alert, DeadLetter

T = TypeVar("T", Alert, DeadLetter)


class MemorySink(Generic[T]):
    """Keeps everything sent to it in `items`, in order."""

    def __init__(self) -> None:
        self.items: list[T] = []

    def send(self, items: Sequence[T]) -> None:
        self.items.extend(items)
