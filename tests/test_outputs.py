"""The order in which a micro-batch's results leave (serve.outputs.deliver)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from ae_monitor.engine import BatchResult, Progress
from ae_monitor.metrics import Metrics
from ae_monitor.records import Alert, DeadLetter
from ae_monitor.serve.outputs import Outputs, deliver


class Recorder:
    """An output that writes its name into a journal shared by all outputs whenever it is handed something."""

    def __init__(self, name: str, journal: list[str]) -> None:
        self._name, self._journal = name, journal

    def send(self, items: Any) -> None:
        self._journal.append(self._name)

    save = __call__ = send


def test_alerts_leave_before_every_other_output_of_their_batch() -> None:
    journal: list[str] = []
    outputs = Outputs(alerts=Recorder("alerts", journal), dead_letters=Recorder("dead letters", journal),
                      scores=Recorder("scores", journal), state=Recorder("alert states", journal))  # fmt: skip
    alert = Alert("a", "firing", "pump-1", "pump", "v1", 0.0, 1.0, 2.0, 2.0, 1.0, 2.0, 0.01)
    letter = DeadLetter(source="kafka:t:0:7", reason="not_json", message="bad")
    result = BatchResult([], [alert], Progress(0), [letter], alert_states={"pump-1": {"firing": True}})
    deliver(result, outputs, Metrics(CollectorRegistry()))
    assert journal == ["alerts", "dead letters", "alert states"]  # no windows scored: nothing for the scores topic
