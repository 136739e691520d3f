"""Where results go: the outputs named by `[sinks]`, and `deliver`, the one way a BatchResult leaves the engine.

Every `send`/`save` returns once the output accepted the items. Alerts go to the delivery queue (sinks.delivery),
which keeps them while a sink is down; without a dead-letter topic, unusable records are written to stderr as JSON
lines: never dropped silently. `serve`, `replay` and the demo all deliver through `deliver`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ae_monitor.config import KafkaConnectionConfig, SinksConfig
from ae_monitor.engine import BatchResult
from ae_monitor.errors import ConfigError, SinkError
from ae_monitor.metrics import Metrics
from ae_monitor.records import Alert, CleanedWindow, DeadLetter, VectorCode, WindowScore
from ae_monitor.sinks import AlertSink, DeadLetterSink
from ae_monitor.sinks.delivery import DeliveryQueue
from ae_monitor.sinks.jsonl import JsonlSink

log = logging.getLogger(__name__)


class StateStore(Protocol):
    def save(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Hand states over; may return before they are stored (see Settling)."""


@runtime_checkable
class Settling(Protocol):
    """An output whose `send`/`save` returns before the data is stored: nothing is committed until `settle` (which
    waits for the acknowledgements, or raises SinkError) has returned."""

    def settle(self) -> None: ...


@dataclass
class Outputs:
    """Where one process's results go; every `send`/`save` returns once accepted."""

    alerts: AlertSink
    dead_letters: DeadLetterSink
    scores: Callable[[Sequence[WindowScore]], None] | None = None
    codes: Callable[[Sequence[VectorCode]], None] | None = None
    cleaned: Callable[[Sequence[CleanedWindow]], None] | None = None
    state: StateStore | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    settling: list[Settling] = field(default_factory=list)  # pipelined outputs to settle before a commit

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:  # closing must go on for the others; the error is logged
                log.exception("error while closing an output")


def deliver(result: BatchResult, outputs: Outputs, metrics: Metrics) -> None:
    """Hand everything a micro-batch produced to its output: alerts first (the one output someone waits for), then
    dead letters, codes, cleaned windows, scores, changed alert states."""
    if result.alerts:
        outputs.alerts.send(result.alerts)
        metrics.alerts_delivered(result.alerts)
    if result.dead_letters:
        send_dead_letters(result.dead_letters, outputs.dead_letters, metrics)
    if result.codes and outputs.codes is not None:
        outputs.codes(result.codes)
    if result.cleaned and outputs.cleaned is not None:
        outputs.cleaned(result.cleaned)
    if outputs.scores is not None and result.window_count:
        outputs.scores(result.windows)
    if outputs.state is not None and result.alert_states:
        outputs.state.save(result.alert_states)


def send_dead_letters(letters: Sequence[DeadLetter], sink: DeadLetterSink, metrics: Metrics) -> None:
    """Send dead letters and count them by reason (the only place they are counted)."""
    sink.send(letters)
    for letter in letters:
        metrics.dead_letters.labels(letter.reason).inc()


class QueueSink:
    """The daemon's alert output: hands alerts to the delivery queue, which keeps them even when a sink is down.

    A full queue is not an error here (the alerts are kept); the serve loop sees `full` and stops consuming."""

    def __init__(self, queue: DeliveryQueue) -> None:
        self._queue = queue

    def send(self, alerts: Sequence[Alert]) -> None:
        try:
            self._queue.offer(alerts)
        except SinkError as exc:
            log.warning("alert delivery queue is full; consumption pauses until sinks recover: %s", exc)


def build_outputs(sinks: SinksConfig, kafka: KafkaConnectionConfig, metrics: Metrics, *,
                  generator_url: str | None = None) -> tuple[Outputs, DeliveryQueue]:  # fmt: skip
    """The alert delivery queue and the dead-letter, scores and state outputs named by `[sinks]`; `generator_url`
    is where Alertmanager alerts link back to (this process's /metrics)."""
    alert_sinks: dict[str, AlertSink] = {}
    closers: list[Callable[[], None]] = []
    topics = _kafka_outputs(sinks, kafka, alert_sinks, closers)
    if sinks.jsonl_path is not None:
        jsonl = JsonlSink.open(sinks.jsonl_path)
        alert_sinks["jsonl"] = jsonl
        closers.append(jsonl.close)
    found, close = http_alert_sinks(sinks, generator_url=generator_url)
    alert_sinks.update(found)
    closers.extend(close)
    if not alert_sinks:
        raise ConfigError("no alert sink configured: set sinks.kafka.alerts_topic, jsonl_path, alertmanager.url "
                          "or webhook.url", key="sinks")  # fmt: skip
    queue = DeliveryQueue(alert_sinks, max_pending=sinks.max_pending_alerts, metrics=metrics)
    dead: DeadLetterSink = topics.get("dead") or JsonlSink(sys.stderr)
    sends = {name: topics[name].send if name in topics else None for name in ("scores", "codes", "cleaned")}
    outputs = Outputs(alerts=QueueSink(queue), dead_letters=dead, scores=sends["scores"], codes=sends["codes"],
                      cleaned=sends["cleaned"], state=topics.get("state"), closers=closers,
                      settling=[topics[name] for name in ("scores", "codes", "cleaned") if name in topics])  # fmt: skip
    return outputs, queue


def _kafka_outputs(sinks: SinksConfig, kafka: KafkaConnectionConfig, alert_sinks: dict[str, AlertSink],
                   closers: list[Callable[[], None]]) -> dict[str, Any]:  # fmt: skip
    cfg = sinks.kafka
    if not any(
        (cfg.alerts_topic, cfg.scores_topic, cfg.codes_topic, cfg.cleaned_topic, cfg.dead_letter_topic, cfg.state_topic)
    ):
        return {}
    from ae_monitor.sinks import kafka as ks

    producer = ks.producer_factory(kafka, send_timeout_s=cfg.send_timeout_s)()
    closers.append(producer.close)
    timeout_s = cfg.send_timeout_s
    found: dict[str, Any] = {}
    if cfg.alerts_topic:
        alert_sinks["kafka"] = ks.KafkaAlertSink(producer, cfg.alerts_topic, timeout_s=timeout_s)
    for name, topic, encode in (("scores", cfg.scores_topic, ks.score_to_json), ("codes", cfg.codes_topic,
                                ks.code_to_json), ("cleaned", cfg.cleaned_topic, ks.cleaned_to_json)):  # fmt: skip
        if topic:
            found[name] = ks.KafkaJsonSink(producer, topic, encode, timeout_s=timeout_s, pipelined=True)
    if cfg.dead_letter_topic:
        found["dead"] = ks.KafkaDeadLetterSink(producer, cfg.dead_letter_topic, timeout_s=timeout_s, pipelined=True)
    if cfg.state_topic:
        found["state"] = ks.KafkaStateStore(producer, cfg.state_topic, timeout_s=timeout_s)
    return found


def http_alert_sinks(
    sinks: SinksConfig, *, generator_url: str | None = None
) -> tuple[dict[str, AlertSink], list[Callable[[], None]]]:
    """The Alertmanager and webhook sinks that `[sinks]` names (none when neither has a url), and their closers.
    `generator_url` is the Alertmanager alerts' source link (sinks/alertmanager.py)."""
    if sinks.alertmanager.url is None and sinks.webhook.url is None:
        return {}, []
    import httpx

    from ae_monitor.sinks.alertmanager import AlertmanagerSink
    from ae_monitor.sinks.webhook import WebhookSink

    client = httpx.Client()
    found: dict[str, AlertSink] = {}
    if sinks.alertmanager.url is not None:
        found["alertmanager"] = AlertmanagerSink.from_config(sinks.alertmanager, client, generator_url=generator_url)
    if sinks.webhook.url is not None:
        found["webhook"] = WebhookSink.from_config(sinks.webhook, client)
    return found, [client.close]


class TeeSink:
    """Sends each batch of alerts to every sink in turn (replay and the demo: stdout or a file, plus HTTP sinks).
    Without a delivery queue, a sink that refuses raises SinkError, which ends the offline run with its message."""

    def __init__(self, *sinks: AlertSink) -> None:
        self._sinks = sinks

    def send(self, alerts: Sequence[Alert]) -> None:
        for sink in self._sinks:
            sink.send(alerts)
