"""Stage 7, sink: a generic HTTP webhook, one JSON POST per alert event (the body is the alert JSON of
docs/alerts.md, the same text as the Kafka alerts topic and the JSONL sink), with configured headers, a timeout
and retries with backoff (sinks/http.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from ae_monitor.config import HttpSinkConfig
from ae_monitor.errors import ConfigError
from ae_monitor.records import Alert
from ae_monitor.sinks.http import DEFAULT_POLICY, RetryPolicy, post_json
from ae_monitor.sinks.jsonl import to_json


class WebhookSink:
    """POSTs each alert to `url`, in order; `send` returns once every one was answered 2xx (or raises SinkError).

    A failure part way raises with the earlier alerts delivered: the caller retries the whole batch, so a receiver
    may see an alert twice and should deduplicate by `id` (deterministic per episode; `status` tells the event).
    """

    name = "webhook"

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client, self._url = client, url
        self._policy, self._timeout_s, self._sleep = policy, timeout_s, sleep
        self._headers = dict(headers or {})

    @staticmethod
    def from_config(cfg: HttpSinkConfig, client: httpx.Client, **kwargs: Any) -> WebhookSink:
        if cfg.url is None:
            raise ConfigError("the webhook sink needs a url", key="sinks.webhook.url")
        policy = RetryPolicy.from_config(cfg)
        return WebhookSink(client, cfg.url, policy=policy, timeout_s=cfg.timeout_s, headers=cfg.headers, **kwargs)

    def send(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            post_json(
                self._client,
                self._url,
                to_json(alert).encode("utf-8"),
                sink=self.name,
                policy=self._policy,
                timeout_s=self._timeout_s,
                headers=self._headers,
                sleep=self._sleep,
            )
