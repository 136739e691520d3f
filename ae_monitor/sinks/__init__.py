"""Stage 7, sink: where alerts, window scores and dead letters go.

Every sink has one verb, `send`, which returns only once the sink has accepted the items (so the caller may commit
the input they came from). A sink that cannot accept raises; it never drops silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ae_monitor.records import Alert, DeadLetter


class AlertSink(Protocol):
    def send(self, alerts: Sequence[Alert]) -> None: ...


class DeadLetterSink(Protocol):
    def send(self, letters: Sequence[DeadLetter]) -> None: ...
