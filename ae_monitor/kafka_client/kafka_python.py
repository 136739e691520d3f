"""The kafka-python implementation of the client interface (`kafka.client = "kafka-python"`, the default).

kafka-python 3 clients block in their constructor until a broker answers, then raise; `connect` retries that. Why a
login failed is only in kafka-python's log (its constructors raise "Unable to bootstrap"), so `_SecurityFailures`
listens there while a client is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ae_monitor.config import KafkaConnectionConfig, KafkaSourceConfig
from ae_monitor.errors import KafkaClientError
from ae_monitor.kafka_client import (
    CommitCallback,
    Fetched,
    Headers,
    Message,
    Partition,
    RebalanceCallback,
    connect,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def client_configs(conn: KafkaConnectionConfig) -> dict[str, Any]:
    """kafka-python settings shared by every client built from `conn` (`extra` passes through unchanged)."""
    return {
        "bootstrap_servers": list(conn.bootstrap_servers),
        "security_protocol": conn.security_protocol,
        "client_id": conn.client_id,
        "bootstrap_timeout_ms": int(conn.connect_timeout_s * 1000),
        **conn.extra,
    }


def _error(exc: KafkaError) -> KafkaClientError:
    # A rebalance in progress is not marked retriable by kafka-python, yet completes on the next polls.
    retriable = bool(getattr(exc, "retriable", False)) or "Rebalance" in type(exc).__name__
    return KafkaClientError(repr(exc), retriable=retriable)


def _built(build: Callable[[], T]) -> T:
    """`build()` with kafka-python's errors as KafkaClientError, naming a refused login when its log said so."""
    with _SecurityFailures() as refused:
        try:
            return build()
        except KafkaError as exc:
            raise KafkaClientError(str(exc), retriable=True, refused=refused.reason) from exc


FETCH_MAX_BYTES = 50 * 1024 * 1024  # kafka-python's and librdkafka's default limit of one fetch response


class KafkaPythonClient:
    name = "kafka-python"

    def __init__(self, conn: KafkaConnectionConfig) -> None:
        self._conn = conn

    def _connect(self, build: Callable[[], T], what: str) -> T:
        return connect(lambda: _built(build), what=what, timeout_s=self._conn.connect_timeout_s)

    def consumer(self, cfg: KafkaSourceConfig) -> GroupConsumer:
        configs = self.consumer_configs(cfg)
        return GroupConsumer(self._connect(lambda: KafkaConsumer(**configs), "consumer"))

    def consumer_configs(self, cfg: KafkaSourceConfig) -> dict[str, Any]:
        """The KafkaConsumer's settings for `cfg` (the connection's `extra` last, so it can override any)."""
        return {
            **client_configs(self._conn),
            "group_id": cfg.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": cfg.start_from,
            "max_poll_records": cfg.max_poll_records,
            "max_partition_fetch_bytes": cfg.max_partition_fetch_bytes,
            # The whole response's limit (default 50 MiB) must leave room for several partitions' fetches.
            "fetch_max_bytes": max(FETCH_MAX_BYTES, 4 * cfg.max_partition_fetch_bytes),
            "session_timeout_ms": cfg.session_timeout_ms,
            "heartbeat_interval_ms": max(100, cfg.session_timeout_ms // 3),
            # Cooperative rebalancing (KIP-429): a rebalance that leaves a partition where it is keeps its stream
            # state and fetch position, instead of revoking everything and warming every stream up again.
            "partition_assignment_strategy": (CooperativeStickyAssignor,),
            **self._conn.extra,
        }

    def producer(self, *, send_timeout_s: float) -> Producer:
        configs = {
            "enable_idempotence": True,
            "acks": "all",
            # No linger: alerts are the output someone waits for, and a busy main loop already batches what it sends
            # while the sender thread waits for the interpreter. 5 ms of linger plus that wait made submit -> broker
            # ack 10-17 ms at the median (scripts/bench_serve.py --trace); flushing after each alert batch cut it to
            # 3-6 ms but held the main loop 3-9 ms in every batch that raised alerts (its median step +25-75 %).
            "linger_ms": 0,
            "max_block_ms": int(send_timeout_s * 1000),  # send() blocks at most this long on metadata
            **client_configs(self._conn),
        }
        return Producer(self._connect(lambda: KafkaProducer(**configs), "producer"))

    def create_topics(self, topics: Mapping[str, Mapping[str, Any]]) -> list[str]:
        admin = self._connect(lambda: KafkaAdminClient(**client_configs(self._conn)), "admin client")
        try:
            existing = set(admin.list_topics())
            missing = {name: dict(spec) for name, spec in topics.items() if name not in existing}
            if missing:
                # Errors are not raised here: another process may have created a topic since the listing. Waiting
                # for every topic to have leaders then tells whether they all exist.
                admin.create_topics(missing, raise_errors=False)
                admin.wait_for_topics(sorted(missing))
            return sorted(missing)
        except KafkaError as exc:
            raise _error(exc) from exc
        finally:
            admin.close()

    def read_topic(self, topic: str, *, timeout_s: float) -> list[tuple[bytes | None, bytes | None]] | None:
        configs = {"group_id": None, "enable_auto_commit": False, **client_configs(self._conn)}
        consumer = self._connect(lambda: KafkaConsumer(**configs), "state consumer")
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                return None
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            end = consumer.end_offsets(partitions)
            read: list[tuple[bytes | None, bytes | None]] = []
            deadline_s = time.monotonic() + timeout_s
            while any(consumer.position(tp) < end[tp] for tp in partitions):
                if time.monotonic() > deadline_s:
                    raise KafkaClientError(f"could not read topic {topic} to its end in {timeout_s} s", retriable=True)
                for records in consumer.poll(timeout_ms=200).values():
                    read += [(record.key, record.value) for record in records]
            return read
        except KafkaError as exc:
            raise _error(exc) from exc
        finally:
            consumer.close()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python calls these on its network thread; the callback only queues the change."""

    def __init__(self, callback: RebalanceCallback) -> None:
        self._callback = callback

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._callback("revoked", _names(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._callback("assigned", _names(assigned))

    def on_partitions_lost(self, lost: Any) -> None:
        self._callback("lost", _names(lost))


def _names(partitions: Any) -> frozenset[Partition]:
    return frozenset((tp.topic, tp.partition) for tp in partitions)


def _offsets(offsets: Mapping[Partition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


class GroupConsumer:
    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def subscribe(self, *, topics: Sequence[str], pattern: str | None, on_rebalance: RebalanceCallback) -> None:
        listener = _Listener(on_rebalance)
        if pattern:
            self._consumer.subscribe(pattern=pattern, listener=listener)
            return
        for topic in topics:
            # Fetch the topic's metadata before joining: a leader that assigns without it hands out nothing and
            # forces a second rebalance at once.
            self._consumer.partitions_for_topic(topic)
        self._consumer.subscribe(topics=list(topics), listener=listener)

    def poll(self, *, timeout_ms: int, max_records: int) -> list[Fetched]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        found = []
        for tp, records in batches.items():
            if records:
                messages: list[Message] = [(m.key, m.value, m.headers or ()) for m in records]
                found.append(Fetched(tp.topic, tp.partition, [m.offset for m in records], messages))
        return found

    def assignment(self) -> frozenset[Partition]:
        return _names(self._consumer.assignment())

    def commit(self, offsets: Mapping[Partition, int], *, on_done: CommitCallback) -> None:
        def answered(_: Any, response: Any) -> None:  # on kafka-python's network thread
            on_done(offsets, response if isinstance(response, Exception) else None)

        self._consumer.commit_async(offsets=_offsets(offsets), callback=answered)

    def commit_sync(self, offsets: Mapping[Partition, int]) -> None:
        try:
            self._consumer.commit(offsets=_offsets(offsets))
        except KafkaError as exc:
            raise _error(exc) from exc

    def highwater(self, partition: Partition) -> int | None:
        high = self._consumer.highwater(TopicPartition(*partition))
        return None if high is None else int(high)

    def silence_s(self) -> float | None:
        """Seconds since the group coordinator last answered a heartbeat (or since the last join completed).

        Reads kafka-python 3.0.12's coordinator state (no public API exposes it); None if that state is not there."""
        heartbeat = getattr(getattr(self._consumer, "_coordinator", None), "heartbeat", None)
        last_receive, last_reset = getattr(heartbeat, "last_receive", None), getattr(heartbeat, "last_reset", None)
        if not isinstance(last_receive, float) or not isinstance(last_reset, float):
            return None
        return time.monotonic() - max(last_receive, last_reset)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _Delivery:
    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def done(self) -> bool:
        return bool(self._future.is_done)

    def wait(self, timeout_s: float) -> None:
        try:
            self._future.get(timeout=timeout_s)
        except KafkaError as exc:
            raise _error(exc) from exc


class Producer:
    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> _Delivery:
        try:
            return _Delivery(self._producer.send(topic, key=key, value=value, headers=list(headers)))
        except KafkaError as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        self._producer.close()


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
