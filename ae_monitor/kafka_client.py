"""The one place Kafka clients are configured and connected, for the source and the sinks alike.

kafka-python 3 clients block in their constructor until a broker answers, then raise; `connect` retries that with
capped exponential backoff until `timeout_s` has passed, then stops with an error that names the setting to check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka.errors import KafkaError

from ae_monitor.config import KafkaConnectionConfig
from ae_monitor.errors import AeMonitorError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


def client_configs(conn: KafkaConnectionConfig) -> dict[str, Any]:
    """kafka-python settings shared by every client built from `conn` (`extra` passes through unchanged)."""
    return {
        "bootstrap_servers": list(conn.bootstrap_servers),
        "security_protocol": conn.security_protocol,
        "client_id": conn.client_id,
        "bootstrap_timeout_ms": int(conn.connect_timeout_s * 1000),
        **conn.extra,
    }


def connect(build: Callable[[], T], *, what: str, timeout_s: float, sleep: Callable[[float], None] = time.sleep) -> T:
    """`build()`, retried with backoff while no broker answers; gives up after `timeout_s` with an error naming
    `kafka.bootstrap_servers`. A refused login or TLS handshake is not retried: the error names it."""
    deadline, delay = time.monotonic() + timeout_s, FIRST_DELAY_S
    while True:
        with _SecurityFailures() as refused:
            try:
                return build()
            except KafkaError as exc:
                error = exc
        if refused.reason is not None:
            raise AeMonitorError(
                f"Kafka refused the {what}'s credentials or TLS handshake ({refused.reason}); check "
                "kafka.security_protocol and the sasl_*/ssl_* settings in kafka.extra"
            ) from error
        if time.monotonic() + delay > deadline:
            raise AeMonitorError(f"cannot reach Kafka (kafka.bootstrap_servers) for the {what}: {error}") from error
        log.warning("Kafka %s: not reachable yet (%s); retrying in %.1f s", what, error, delay)
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


class _SecurityFailures(logging.Handler):
    """While installed on kafka-python's logger, keeps the first authentication or TLS failure it logs: its
    constructors only raise "Unable to bootstrap", which hides why."""

    _MARKERS = ("SaslAuthenticationFailed", "Authentication failed", "AuthorizationError", "SSLError",
                "CERTIFICATE_VERIFY_FAILED", "certificate verify failed")  # fmt: skip

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason: str | None = None
        self._logger = logging.getLogger("kafka")

    def emit(self, record: logging.LogRecord) -> None:
        if self.reason is None:
            message = record.getMessage()
            if any(marker in message for marker in self._MARKERS):
                self.reason = message

    def __enter__(self) -> _SecurityFailures:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
