"""The confluent-kafka (librdkafka) implementation of the client interface (`kafka.client = "confluent"`).

librdkafka fetches, decompresses and checks record batches in C on its own threads, where kafka-python does it in
Python on the main one. Its callbacks (rebalances, commit results, deliveries, errors, statistics, logs) run inside
`poll`/`consume`/`flush` on the calling thread, so nothing here needs a lock.

librdkafka's constructors never wait for a broker; `_probe` asks for the cluster's metadata so that startup still
stops, named, when no broker answers or one refuses the login, as it does with kafka-python.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from ae_monitor.config import KafkaConnectionConfig, KafkaSourceConfig
from ae_monitor.errors import ConfigError, KafkaClientError
from ae_monitor.kafka_client import CommitCallback, Fetched, Headers, Message, Partition, RebalanceCallback, connect

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

T = TypeVar("T")

# kafka-python names in `kafka.extra` (docs/security.md) and the librdkafka properties they become.
_PROPERTIES: dict[str, str] = {
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "request_timeout_ms": "request.timeout.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
}
_REFUSALS = (KafkaError._AUTHENTICATION, KafkaError._SSL)
FETCH_QUEUE_BACKOFF_MS = 10
STATISTICS_INTERVAL_MS = 1000  # how often the group coordinator's state is read (silence_s)


def properties(conn: KafkaConnectionConfig) -> dict[str, Any]:
    """librdkafka properties shared by every client built from `conn`, `kafka.extra` mapped to librdkafka names.

    >>> conn = KafkaConnectionConfig(security_protocol="SASL_SSL", extra={"sasl_mechanism": "SCRAM-SHA-512"})
    >>> {k: v for k, v in properties(conn).items() if k.startswith(("sasl", "security"))}
    {'security.protocol': 'sasl_ssl', 'sasl.mechanism': 'SCRAM-SHA-512'}
    """
    found: dict[str, Any] = {
        "bootstrap.servers": ",".join(conn.bootstrap_servers),
        "security.protocol": conn.security_protocol.lower(),
        "client.id": conn.client_id,
        "logger": librdkafka_log,  # librdkafka writes to stderr otherwise
    }
    for key, value in conn.extra.items():
        if key == "ssl_check_hostname":
            found["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif key in _PROPERTIES:
            found[_PROPERTIES[key]] = value
        elif "." in key:
            found[key] = value  # a librdkafka property, as its documentation names it
        else:
            raise ConfigError(f"'{key}' is a kafka-python setting with no librdkafka equivalent here; use the "
                              "librdkafka property name (dotted, e.g. ssl.ca.location) with client = "
                              '"confluent"', key=f"kafka.extra.{key}")  # fmt: skip
    return found


def _error(exc: BaseException) -> KafkaClientError:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if error is None:
        return KafkaClientError(repr(exc), retriable=isinstance(exc, BufferError))
    name = error.name() or ""
    retriable = error.retriable() or "REBALANCE" in name or error.code() in (
        KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._WAIT_COORD,
    )  # fmt: skip
    return KafkaClientError(f"{name}: {error.str()}", retriable=retriable)


class _Refusals:
    """librdkafka's `error_cb`: keeps the first refused login or TLS handshake (its requests only time out)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, error: KafkaError) -> None:
        if self.reason is None and error.code() in _REFUSALS:
            self.reason = error.str()
        log.debug("librdkafka: %s", error)


def _probe(client: Any, refusals: _Refusals, timeout_s: float, *, close: Callable[[], Any]) -> None:
    """Ask for the cluster's metadata; on failure close the client and raise KafkaClientError."""
    try:
        client.list_topics(timeout=timeout_s)
        return
    except KafkaException as exc:
        failure = exc
    client.poll(0)  # serve the error callbacks: was it a refusal?
    close()
    raise KafkaClientError(str(failure), retriable=True, refused=refusals.reason) from failure


class ConfluentClient:
    name = "confluent"

    def __init__(self, conn: KafkaConnectionConfig) -> None:
        self._conn = conn
        self._properties = properties(conn)  # a bad `extra` stops startup here, named

    def _connect(self, build: Callable[[dict[str, Any]], T], what: str, close: Callable[[T], Any]) -> T:
        def attempt() -> T:
            refusals = _Refusals()
            client = build({**self._properties, "error_cb": refusals})
            _probe(client, refusals, min(self._conn.connect_timeout_s, 10.0), close=lambda: close(client))
            return client

        return connect(attempt, what=what, timeout_s=self._conn.connect_timeout_s)

    def consumer(self, cfg: KafkaSourceConfig) -> GroupConsumer:
        consumer = GroupConsumer(cfg)
        consumer.attach(
            self._connect(lambda p: Consumer({**p, **consumer.settings()}), "consumer", lambda c: c.close())
        )
        return consumer

    def producer(self, *, send_timeout_s: float) -> Producer:
        settings = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,  # a few ms of batching: alerts come in bursts, and send waits for acks anyway
            # A message not stored within the send timeout fails (the sinks send it again later) rather than
            # staying queued for librdkafka's default 5 minutes behind their back.
            "message.timeout.ms": int(send_timeout_s * 1000),
        }
        built = self._connect(lambda p: _Producer({**p, **settings}), "producer", lambda p: p.flush(0))
        return Producer(built)

    def create_topics(self, topics: Mapping[str, Mapping[str, Any]]) -> list[str]:
        admin = self._connect(AdminClient, "admin client", lambda a: None)
        timeout_s = self._conn.connect_timeout_s
        try:
            existing = set(admin.list_topics(timeout=timeout_s).topics)
            missing = sorted(name for name in topics if name not in existing)
            if not missing:
                return []
            new = [NewTopic(name, num_partitions=int(topics[name].get("num_partitions", 1)),
                            replication_factor=int(topics[name].get("replication_factor", 1)),
                            config=dict(topics[name].get("configs", {}))) for name in missing]  # fmt: skip
            for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
                try:
                    future.result()
                except KafkaException as exc:  # another process may have created it since the listing
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise _error(exc) from exc
                    log.debug("topic %s was created meanwhile", name)
            _wait_for_leaders(admin, missing, timeout_s)
            return missing
        except KafkaException as exc:
            raise _error(exc) from exc

    def read_topic(self, topic: str, *, timeout_s: float) -> list[tuple[bytes | None, bytes | None]] | None:
        # A group id is required by the binding; this consumer never joins it nor commits (assign, no subscribe).
        settings = {"group.id": f"{self._conn.client_id}-reader", "enable.auto.commit": False,
                    "enable.partition.eof": True}  # fmt: skip
        consumer = self._connect(lambda p: Consumer({**p, **settings}), "state consumer", lambda c: c.close())
        try:
            return _read_whole(consumer, topic, timeout_s)
        except KafkaException as exc:
            raise _error(exc) from exc
        finally:
            consumer.close()


def _wait_for_leaders(admin: Any, topics: Sequence[str], timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while True:
        listed = admin.list_topics(timeout=timeout_s).topics
        if all(t in listed and listed[t].partitions and all(p.leader >= 0 for p in listed[t].partitions.values())
               for t in topics):  # fmt: skip
            return
        if time.monotonic() > deadline_s:
            raise KafkaClientError(f"topics {list(topics)} have no leaders after {timeout_s} s", retriable=True)
        time.sleep(0.1)


def _read_whole(consumer: Any, topic: str, timeout_s: float) -> list[tuple[bytes | None, bytes | None]] | None:
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return None
    deadline_s = time.monotonic() + timeout_s
    remaining: dict[int, int] = {}  # partition -> its end offset at the call, for those with records
    for p in metadata.partitions:
        low, high = _watermarks(consumer, TopicPartition(topic, p), deadline_s)
        if high > low:
            remaining[p] = high
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
    read: list[tuple[bytes | None, bytes | None]] = []
    while remaining:
        if time.monotonic() > deadline_s:
            raise KafkaClientError(f"could not read topic {topic} to its end in {timeout_s} s", retriable=True)
        for m in consumer.consume(10000, timeout=0.2):
            error = m.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise KafkaClientError(f"reading topic {topic}: {error.str()}", retriable=error.retriable())
            if error is None:
                read.append((m.key(), m.value()))
            # An end-of-partition event carries the next offset; a message its own (compaction leaves gaps).
            reached = m.offset() if error is not None else m.offset() + 1
            if m.partition() in remaining and reached >= remaining[m.partition()]:
                del remaining[m.partition()]
    return read


def _watermarks(consumer: Any, partition: Any, deadline_s: float) -> tuple[int, int]:
    """(low, high) offsets of `partition`, asked again while its leader is not known yet (a topic created moments
    ago answers NOT_LEADER_FOR_PARTITION for a while)."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=max(0.1, deadline_s - time.monotonic()))
            return int(low), int(high)
        except KafkaException as exc:
            if not _error(exc).retriable or time.monotonic() > deadline_s:
                raise
            time.sleep(0.1)


FETCH_MAX_BYTES = 50 * 1024 * 1024  # librdkafka's default fetch.max.bytes, as kafka-python's fetch_max_bytes
RECEIVE_MAX_BYTES = 100_000_000  # librdkafka's default receive.message.max.bytes


def fetch_max_bytes(cfg: KafkaSourceConfig) -> int:
    """One fetch response's limit: the default, or room for four partitions' fetches when those are larger."""
    return max(FETCH_MAX_BYTES, 4 * cfg.max_partition_fetch_bytes)


class GroupConsumer:
    """A librdkafka consumer in a group: cooperative-sticky assignment, no automatic commits."""

    # Records per slice of serve's micro-batch (sources/kafka.py; 1,000 for kafka-python, whose slices are unpacked in
    # Python). Measured with bench_serve's sensor topic, same-run A/B, 3 runs each: serve 166k msg/s median with
    # 1,000, 186k with 5,000; and 132k / 152k in a second A/B.
    poll_slice_records = 5000

    def __init__(self, cfg: KafkaSourceConfig) -> None:
        self._cfg = cfg
        self._consumer: Any = None
        self._on_rebalance: RebalanceCallback | None = None
        self._on_commit: CommitCallback | None = None
        # Since when librdkafka's statistics show the group coordinator away (None: it answers, or no word yet).
        self._away_since: float | None = None

    def settings(self) -> dict[str, Any]:
        cfg = self._cfg
        return {
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": cfg.start_from,
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": max(100, cfg.session_timeout_ms // 3),
            # Cooperative rebalancing (KIP-429), as with kafka-python: partitions that stay keep their streams.
            "partition.assignment.strategy": "cooperative-sticky",
            # As kafka-python does: subscribing to a topic the broker may auto-create creates it.
            "allow.auto.create.topics": True,
            # librdkafka stops fetching once queued.min.messages (100,000) wait in its queue, then waits this long
            # before it looks again (default 1 s): at serve's rates that pause, not the broker, set the pace
            # (measured: 160k-990k msg/s erratic by default, 660k-1.1M with 10 ms, scripts/bench_clients.py).
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "max.partition.fetch.bytes": cfg.max_partition_fetch_bytes,
            "fetch.max.bytes": fetch_max_bytes(cfg),
            # librdkafka refuses a fetch limit above what it accepts in one response (default 100 MB).
            "receive.message.max.bytes": max(RECEIVE_MAX_BYTES, fetch_max_bytes(cfg) + 512),
            "on_commit": self._committed,
            "stats_cb": self._statistics,
            "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        }

    def attach(self, consumer: Any) -> None:
        self._consumer = consumer

    def subscribe(self, *, topics: Sequence[str], pattern: str | None, on_rebalance: RebalanceCallback) -> None:
        self._on_rebalance = on_rebalance
        # librdkafka reads a subscription that starts with "^" as a regular expression.
        names = [pattern if pattern.startswith("^") else f"^{pattern}"] if pattern else list(topics)
        for topic in topics if not pattern else ():
            self._await_metadata(topic)
        self._consumer.subscribe(names, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)

    def _await_metadata(self, topic: str, *, timeout_s: float = 10.0) -> None:
        """Ask for the topic's metadata until it has partitions (a missing topic is then auto-created, where the
        broker allows it, as kafka-python does). librdkafka asks again only every metadata.max.age.ms otherwise,
        and a group joined before the topic exists gets nothing assigned for that long."""
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            try:
                found = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            except KafkaException as exc:
                log.warning("no metadata for topic %s yet: %s", topic, exc)
                found = None
            if found is not None and found.error is None and found.partitions:
                return
            time.sleep(0.2)
        log.warning("topic %s has no partitions yet; its records are read once it has", topic)

    def _assigned(self, _: Any, partitions: list[Any]) -> None:
        self._rebalanced("assigned", partitions)

    def _revoked(self, _: Any, partitions: list[Any]) -> None:
        self._rebalanced("revoked", partitions)

    def _lost(self, _: Any, partitions: list[Any]) -> None:
        self._rebalanced("lost", partitions)

    def _rebalanced(self, kind: str, partitions: list[Any]) -> None:
        # The binding applies the incremental (un)assignment itself once this returns.
        if self._on_rebalance is not None and partitions:
            self._on_rebalance(kind, frozenset((tp.topic, tp.partition) for tp in partitions))

    def poll(self, *, timeout_ms: int, max_records: int) -> list[Fetched]:
        # Wait for the first message only, then take what is buffered: `consume(n, timeout)` alone would wait for
        # n messages or the whole timeout, delaying a quiet topic's records by the batch delay every time.
        first = self._consumer.poll(timeout_ms / 1000)
        if first is None:
            return []
        messages = [first, *self._consumer.consume(max_records - 1, timeout=0)] if max_records > 1 else [first]
        return _by_partition(messages)

    def assignment(self) -> frozenset[Partition]:
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def commit(self, offsets: Mapping[Partition, int], *, on_done: CommitCallback) -> None:
        self._on_commit = on_done
        try:
            self._consumer.commit(offsets=_partitions(offsets), asynchronous=True)
        except KafkaException as exc:
            on_done(offsets, _error(exc))

    def _committed(self, error: KafkaError | None, partitions: list[Any]) -> None:
        """librdkafka's `on_commit`, run inside poll: the outcome of an asynchronous commit."""
        failed = error or next((tp.error for tp in partitions if tp.error is not None), None)
        offsets = {(tp.topic, tp.partition): tp.offset for tp in partitions}
        if self._on_commit is not None:
            self._on_commit(offsets, None if failed is None else _error(KafkaException(failed)))

    def commit_sync(self, offsets: Mapping[Partition, int]) -> None:
        try:
            self._consumer.commit(offsets=_partitions(offsets), asynchronous=False)
        except KafkaException as exc:
            raise _error(exc) from exc

    def highwater(self, partition: Partition) -> int | None:
        # cached: the end offset librdkafka learnt with the latest fetch of this partition, no request.
        _, high = self._consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
        return int(high) if high >= 0 else None

    def _statistics(self, payload: str) -> None:
        """librdkafka's statistics (every STATISTICS_INTERVAL_MS, inside poll): is the group coordinator there?"""
        stats = json.loads(payload)
        group_up = stats.get("cgrp", {}).get("state") == "up"
        broker_up = any(b.get("state") == "UP" for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0)
        if group_up and broker_up:
            self._away_since = None
        elif self._away_since is None:
            self._away_since = time.monotonic()

    def silence_s(self) -> float | None:
        """Counted only from statistics that show the coordinator away: they are served inside `poll`, so a loop that
        stops polling for a while (back-pressure) is not mistaken for a silent group."""
        return 0.0 if self._away_since is None else time.monotonic() - self._away_since

    def close(self) -> None:
        self._on_rebalance = None  # the final revocation of close() is the caller's to handle, not an event
        self._on_commit = None
        self._consumer.close()


def _partitions(offsets: Mapping[Partition, int]) -> list[Any]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def _by_partition(messages: list[Any]) -> list[Fetched]:
    """Messages of one poll grouped by partition, in order. The hot path of a poll (six calls into the binding per
    message): comprehensions, and one pass for the usual poll that holds one partition only."""
    good = [m for m in messages if m.error() is None]
    if len(good) < len(messages):
        for m in messages:
            error = m.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", error.str())
    keys = [(m.topic(), m.partition()) for m in good]
    groups: dict[Partition, list[Any]] = {}
    if len(set(keys)) == 1:
        groups[keys[0]] = good
    else:
        for key, m in zip(keys, good, strict=True):
            groups.setdefault(key, []).append(m)
    found = []
    for (topic, partition), group in groups.items():
        batch: list[Message] = [(m.key(), m.value(), m.headers() or ()) for m in group]
        found.append(Fetched(topic, partition, [m.offset() for m in group], batch))
    return found


class _Delivery:
    """Filled in by librdkafka's delivery callback, which runs inside the producer's `poll`/`flush`."""

    __slots__ = ("_error", "_finished", "_producer")

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._finished = False
        self._error: KafkaError | None = None

    def __call__(self, error: KafkaError | None, _: Any) -> None:
        self._finished, self._error = True, error

    def done(self) -> bool:
        if not self._finished:
            self._producer.poll(0)
        return self._finished

    def wait(self, timeout_s: float) -> None:
        deadline_s = time.monotonic() + timeout_s
        while not self._finished:
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                raise KafkaClientError(f"no acknowledgement within {timeout_s:.1f} s", retriable=True)
            self._producer.poll(min(left_s, 0.1))
        if self._error is not None:
            raise _error(KafkaException(self._error))


class Producer:
    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> _Delivery:
        delivery = _Delivery(self._producer)
        try:
            self._producer.produce(topic, value=value, key=key, headers=list(headers) or None, on_delivery=delivery)
        except (KafkaException, BufferError) as exc:
            raise _error(exc) from exc
        return delivery

    def close(self) -> None:
        left = self._producer.flush(5.0)
        if left:
            log.warning("closing the producer with %d messages not acknowledged", left)
