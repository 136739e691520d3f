"""Stage 7, sink: one HTTP target (URL, headers, timeout) shared by the Alertmanager and webhook sinks.

`HttpTarget.post` makes exactly one attempt and never sleeps, so a receiver that is down costs the serve loop one
timeout at most. What a retry can fix (connection errors, timeouts, HTTP 429 and 5xx) raises a retriable SinkError
that carries the receiver's `Retry-After` when it sent one; any other 4xx means the receiver rejects the payload
itself and raises SinkError(retriable=False). Retrying is the delivery queue's business alone (sinks/delivery.py):
it keeps the alerts and tries again with the sink's own backoff (`backoff_initial_s`, `backoff_max_s`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from ae_monitor.config import HttpSinkConfig
from ae_monitor.errors import ConfigError, SinkError
from ae_monitor.sinks.delivery import Backoff

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class HttpTarget:
    """Where and how an HTTP sink POSTs; `backoff` is what the delivery queue waits between its attempts."""

    client: httpx.Client
    url: str
    sink: str
    timeout_s: float = 5.0
    headers: Mapping[str, str] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)

    @staticmethod
    def from_config(cfg: HttpSinkConfig, client: httpx.Client, *, sink: str, path: str = "") -> HttpTarget:
        """The target of `[sinks.<sink>]`; `path` is appended to its url (e.g. Alertmanager's API path)."""
        if cfg.url is None:
            raise ConfigError(f"the {sink} sink needs a url", key=f"sinks.{sink}.url")
        return HttpTarget(client, cfg.url.rstrip("/") + path if path else cfg.url, sink, cfg.timeout_s,
                          dict(cfg.headers), Backoff(cfg.backoff_initial_s, cfg.backoff_max_s))  # fmt: skip

    def post(self, body: bytes) -> httpx.Response:
        """POST `body` (JSON) once; returns the 2xx response or raises SinkError."""
        headers = {**JSON_HEADERS, **self.headers}
        try:
            response = self.client.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
        except httpx.TransportError as exc:  # connection refused or reset, timeouts, protocol errors
            raise SinkError(f"POST {self.url} failed: {exc!r}", sink=self.sink) from exc
        if response.is_success:
            return response
        status = response.status_code
        message = f"POST {self.url} answered HTTP {status}: {response.text[:200]}"
        if status == 429 or status >= 500:
            raise SinkError(message, sink=self.sink, retry_after_s=_retry_after_s(response))
        raise SinkError(message + " (not retried: the receiver rejects the request itself)", sink=self.sink,
                        retriable=False)  # fmt: skip


def _retry_after_s(response: httpx.Response) -> float | None:
    # Only the delay-seconds form; an HTTP date is rare from alert receivers and falls back to our backoff.
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
