"""Stage 7, sink: the HTTP delivery policy shared by the Alertmanager and webhook sinks.

`post_json` POSTs one body and retries what a retry can fix: connection errors, timeouts, HTTP 429 and 5xx, with
exponential backoff and full jitter (a random delay between 0 and the capped exponential, so many daemons that
lost the same receiver do not retry in lockstep). Any other 4xx means the receiver rejects the payload itself:
it raises SinkError(retriable=False) at once. The retries block the caller; a longer outage is the delivery
queue's business (sinks/delivery.py), which keeps the alerts and tries again later.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from ae_monitor.config import HttpSinkConfig
from ae_monitor.errors import SinkError

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: `max_retries` after the first try, delays capped at `backoff_max_s`."""

    max_retries: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    @staticmethod
    def from_config(cfg: HttpSinkConfig) -> RetryPolicy:
        return RetryPolicy(cfg.max_retries, cfg.backoff_initial_s, cfg.backoff_max_s)

    def cap_s(self, attempt: int) -> float:
        """The longest delay after failed try number `attempt` (0-based).

        >>> [RetryPolicy(backoff_initial_s=0.5, backoff_max_s=3).cap_s(a) for a in range(4)]
        [0.5, 1.0, 2.0, 3]
        """
        return min(self.backoff_max_s, self.backoff_initial_s * 2.0**attempt)

    def delay_s(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, cap_s(attempt))."""
        return rng() * self.cap_s(attempt)


DEFAULT_POLICY = RetryPolicy()
NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True)
class _Failure:
    error: SinkError
    retry_after_s: float | None = None  # what a 429/503 asked for, when it said


def post_json(
    client: httpx.Client,
    url: str,
    body: bytes,
    *,
    sink: str,
    policy: RetryPolicy,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """POST `body` (JSON) to `url`, retrying per `policy`; returns the 2xx response or raises SinkError."""
    all_headers = {**JSON_HEADERS, **(headers or {})}
    for attempt in range(policy.max_retries + 1):
        outcome = _try_post(client, url, body, all_headers, sink=sink, timeout_s=timeout_s)
        if isinstance(outcome, httpx.Response):
            return outcome
        if attempt == policy.max_retries:
            raise outcome.error
        delay_s = policy.delay_s(attempt)
        if outcome.retry_after_s is not None:
            delay_s = min(outcome.retry_after_s, policy.backoff_max_s)
        log.warning("%s; retry %d of %d in %.2f s", outcome.error, attempt + 1, policy.max_retries, delay_s)
        sleep(delay_s)
    raise AssertionError("unreachable: the loop returns or raises")


def _try_post(
    client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str], *, sink: str, timeout_s: float
) -> httpx.Response | _Failure:
    try:
        response = client.post(url, content=body, headers=headers, timeout=timeout_s)
    except httpx.TransportError as exc:  # connection refused or reset, timeouts, protocol errors
        return _Failure(SinkError(f"POST {url} failed: {exc!r}", sink=sink))
    if response.is_success:
        return response
    status = response.status_code
    message = f"POST {url} answered HTTP {status}: {response.text[:200]}"
    if status == 429 or status >= 500:
        return _Failure(SinkError(message, sink=sink), _retry_after_s(response))
    raise SinkError(message + " (not retried: the receiver rejects the request itself)", sink=sink, retriable=False)


def _retry_after_s(response: httpx.Response) -> float | None:
    # Only the delay-seconds form; an HTTP date is rare from alert receivers and falls back to our backoff.
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
