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
    `kafka.bootstrap_servers`."""
    deadline, delay = time.monotonic() + timeout_s, FIRST_DELAY_S
    while True:
        try:
            return build()
        except KafkaError as exc:
            if time.monotonic() + delay > deadline:
                raise AeMonitorError(f"cannot reach Kafka (kafka.bootstrap_servers) for the {what}: {exc}") from exc
            log.warning("Kafka %s: not reachable yet (%s); retrying in %.1f s", what, exc, delay)
            sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
