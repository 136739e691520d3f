"""Stage 7, sink: a generic HTTP webhook, one JSON POST per alert event (the body is the alert JSON of
docs/alerts.md, the same text as the Kafka alerts topic and the JSONL sink), with configured headers and a timeout.
One attempt per alert (sinks/http.py); the delivery queue retries with the sink's backoff."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ae_monitor.config import HttpSinkConfig
from ae_monitor.records import Alert
from ae_monitor.sinks.delivery import Backoff
from ae_monitor.sinks.http import HttpTarget
from ae_monitor.sinks.jsonl import to_json


class WebhookSink:
    """POSTs each alert to the target, in order; `send` returns once every one was answered 2xx (or raises SinkError).

    A failure part way raises with the earlier alerts delivered: the queue retries the whole batch, so a receiver
    may see an alert twice and should deduplicate by `id` (deterministic per episode; `status` tells the event).
    """

    name = "webhook"

    def __init__(self, target: HttpTarget) -> None:
        self._target = target

    @property
    def backoff(self) -> Backoff:
        return self._target.backoff

    @staticmethod
    def from_config(cfg: HttpSinkConfig, client: httpx.Client) -> WebhookSink:
        return WebhookSink(HttpTarget.from_config(cfg, client, sink=WebhookSink.name))

    def send(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self._target.post(to_json(alert).encode("utf-8"))
