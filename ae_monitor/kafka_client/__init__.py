"""The one place Kafka clients are built, for the source and the sinks alike: the few operations they use, as a
small interface, with two implementations chosen by `kafka.client`.

- `kafka-python` (the default, `kafka_client/kafka_python.py`): pure Python.
- `confluent` (`kafka_client/confluent.py`): confluent-kafka, the Python binding of librdkafka (C).

    client = build_client(conn)               # KafkaClient for `[kafka]`
    consumer = client.consumer(source_cfg)    # GroupConsumer: subscribe, poll, commit, assignment, highwater
    producer = client.producer(send_timeout_s=10)   # Producer: idempotent, acks=all; send -> Delivery
    client.create_topics({...}); client.read_topic("state")

Both connect with capped exponential backoff (`connect`) until `kafka.connect_timeout_s` has passed, then stop with
an error naming the setting to check; a refused login or TLS handshake is not retried. Errors of either library
reach the source and sinks as `KafkaClientError`, which says whether a retry can help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ae_monitor.config import KafkaConnectionConfig, KafkaSourceConfig
from ae_monitor.errors import AeMonitorError, KafkaClientError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0

Partition = tuple[str, int]
Headers = Sequence[tuple[str, bytes]]
Message = tuple[bytes | None, bytes | None, Headers]  # key, value, headers
# A rebalance as the source sees it: "assigned" | "revoked" | "lost", and the partitions concerned.
RebalanceCallback = Callable[[str, frozenset[Partition]], None]
# An asynchronous commit's outcome: the offsets it carried, and the error (None when the broker stored them).
CommitCallback = Callable[[Mapping[Partition, int], Exception | None], None]


@dataclass(frozen=True, slots=True)
class Fetched:
    """One partition's messages of a poll, in offset order: `offsets[i]` is the offset of `messages[i]`."""

    topic: str
    partition: int
    offsets: list[int]
    messages: list[Message]


class GroupConsumer(Protocol):
    """A member of a consumer group that never commits by itself."""

    def subscribe(self, *, topics: Sequence[str], pattern: str | None, on_rebalance: RebalanceCallback) -> None:
        """Join the group; `on_rebalance` runs inside `poll` (or on the client's thread): it must only record."""

    def poll(self, *, timeout_ms: int, max_records: int) -> list[Fetched]:
        """At most `max_records` messages: what is buffered at once, else waits up to `timeout_ms` for some."""

    def assignment(self) -> frozenset[Partition]: ...

    def commit(self, offsets: Mapping[Partition, int], *, on_done: CommitCallback) -> None:
        """Commit without waiting (next offset to read, per partition); `on_done` gets the outcome later."""

    def commit_sync(self, offsets: Mapping[Partition, int]) -> None:
        """Commit and wait; raises KafkaClientError (retriable during a rebalance)."""

    def highwater(self, partition: Partition) -> int | None:
        """The partition's end offset as of the latest fetch (no network call); None when not known yet."""

    def silence_s(self) -> float | None:
        """Seconds the group coordinator has not answered; None when the client cannot tell."""

    def close(self) -> None:
        """Leave the group without committing; rebalance callbacks no longer run."""


class Delivery(Protocol):
    """One message handed to a producer."""

    def done(self) -> bool: ...

    def wait(self, timeout_s: float) -> None:
        """Return once the broker stored it; raise KafkaClientError when it did not, or not in `timeout_s`."""


class Producer(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> Delivery:
        """Hand a message over; raises KafkaClientError when the producer refuses it at once (too large, full)."""

    def close(self) -> None: ...


class KafkaClient(Protocol):
    """Builds connected clients for one `[kafka]` section."""

    name: str

    def consumer(self, cfg: KafkaSourceConfig) -> GroupConsumer: ...

    def producer(self, *, send_timeout_s: float) -> Producer: ...

    def create_topics(self, topics: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Create the missing `topics` (name -> {num_partitions, replication_factor, configs}) and wait until every
        partition has a leader; returns those created. Existing topics are left as they are."""

    def read_topic(self, topic: str, *, timeout_s: float) -> list[tuple[bytes | None, bytes | None]] | None:
        """Every (key, value) of `topic` from its beginning to its end offsets at the call; None when the topic does
        not exist. Raises KafkaClientError when the end is not reached within `timeout_s`."""


def build_client(conn: KafkaConnectionConfig) -> KafkaClient:
    """The implementation `conn.client` names; each library is imported only when chosen."""
    if conn.client == "confluent":
        from ae_monitor.kafka_client.confluent import ConfluentClient

        return ConfluentClient(conn)
    from ae_monitor.kafka_client.kafka_python import KafkaPythonClient

    return KafkaPythonClient(conn)


def client_configs(conn: KafkaConnectionConfig) -> dict[str, Any]:
    """kafka-python settings shared by every client built from `conn` (`extra` passes through unchanged)."""
    from ae_monitor.kafka_client.kafka_python import client_configs as configs

    return configs(conn)


def connect(build: Callable[[], T], *, what: str, timeout_s: float, sleep: Callable[[float], None] = time.sleep) -> T:
    """`build()`, retried with backoff while no broker answers; gives up after `timeout_s` with an error naming
    `kafka.bootstrap_servers`. A refused login or TLS handshake (`KafkaClientError.refused`) is not retried."""
    deadline, delay = time.monotonic() + timeout_s, FIRST_DELAY_S
    while True:
        try:
            return build()
        except KafkaClientError as exc:
            error = exc
        if error.refused is not None:
            raise AeMonitorError(
                f"Kafka refused the {what}'s credentials or TLS handshake ({error.refused}); check "
                "kafka.security_protocol and the sasl_*/ssl_* settings in kafka.extra"
            ) from error
        if time.monotonic() + delay > deadline:
            raise AeMonitorError(f"cannot reach Kafka (kafka.bootstrap_servers) for the {what}: {error}") from error
        log.warning("Kafka %s: not reachable yet (%s); retrying in %.1f s", what, error, delay)
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
