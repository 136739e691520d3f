"""Stage 7, sink: Kafka topics for alerts, per-window scores, dead letters and the per-stream alert state.

Every sink waits for the broker's acknowledgement of each message before `send` returns (or, pipelined, before
`settle` does), so the caller may commit the input the items came from; a failure or a timeout raises SinkError
(retriable unless the producer says a retry cannot help). Producers are built by an injected factory
(`producer_factory(conn)` makes real ones, of the library `kafka.client` names: idempotent, acks=all), so the daemon
shares one producer between the sinks and tests can use the real local broker. The sinks never close the producer:
whoever built it does, after the last send.

The alert state lives in a compacted topic keyed by stream: `KafkaStateStore.save` publishes a stream's state
(`StreamAlertState.to_dict()` JSON, passed here as a plain dict), `delete` writes a tombstone, and `load_state`
reads the topic from the beginning to its end offsets at startup, the last value per key winning.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ae_monitor.config import KafkaConnectionConfig
from ae_monitor.errors import KafkaClientError, SinkError
from ae_monitor.kafka_client import Delivery, KafkaClient, Message, Producer, build_client
from ae_monitor.records import Alert, CleanedWindow, DeadLetter, VectorCode, WindowScore
from ae_monitor.sinks.jsonl import to_json

log = logging.getLogger(__name__)

ProducerFactory = Callable[[], Producer]
ClientFactory = Callable[[], KafkaClient]


class _Streamed(Protocol):
    @property
    def stream(self) -> str: ...


T = TypeVar("T", bound=_Streamed)

BASE64_PREFIX = "base64:"  # a DeadLetter.payload of bytes that are not UTF-8 (sources/decode.py, docs/records.md)


# --- clients ------------------------------------------------------------------------------------------------------


def producer_factory(conn: KafkaConnectionConfig, *, send_timeout_s: float = 10.0) -> ProducerFactory:
    """A factory of idempotent acks=all producers; a message not stored within `send_timeout_s` fails."""
    client = build_client(conn)
    return lambda: client.producer(send_timeout_s=send_timeout_s)


def admin_factory(conn: KafkaConnectionConfig) -> ClientFactory:
    """The client that creates topics (`ensure_topics`)."""
    return lambda: build_client(conn)


def state_consumer_factory(conn: KafkaConnectionConfig) -> ClientFactory:
    """The client that reads the state topic whole for `load_state` (no group, no commits)."""
    return lambda: build_client(conn)


def ensure_topics(admin_factory: ClientFactory, topics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Create the missing `topics` (name -> {num_partitions, replication_factor, configs}); returns those created.

    Existing topics are left as they are (their settings are not checked or changed).
    """
    try:
        created = admin_factory().create_topics(topics)
    except KafkaClientError as exc:
        raise SinkError(f"could not create topics {sorted(topics)}: {exc}", sink="kafka-admin") from exc
    if created:
        log.info("created Kafka topics %s", created)
    return created


def compacted(partitions: int = 1, replication_factor: int = 1) -> dict[str, Any]:
    """The topic spec of a state topic: compacted, so the latest value per stream is kept forever."""
    configs = {"cleanup.policy": "compact"}
    return {"num_partitions": partitions, "replication_factor": replication_factor, "configs": configs}


# --- sending ------------------------------------------------------------------------------------------------------


def send_all(producer: Producer, topic: str, messages: Iterable[Message], *, sink: str, timeout_s: float) -> None:
    """Send every message, then wait until the broker acknowledged all of them (or raise SinkError)."""
    submit_all(producer, topic, messages, sink=sink).result(timeout_s)


def submit_all(producer: Producer, topic: str, messages: Iterable[Message], *, sink: str) -> PendingSends:
    """Hand every message to the producer; the broker's answers come later (see PendingSends)."""
    try:
        deliveries = [producer.send(topic, k, v, h) for k, v, h in messages]
    except KafkaClientError as exc:
        raise _refused(topic, sink, exc) from exc
    return PendingSends(deliveries, topic=topic, sink=sink)


def _refused(topic: str, sink: str, exc: KafkaClientError) -> SinkError:
    # The client says which errors a retry can fix (timeouts, leader changes; not an oversized message).
    return SinkError(f"topic {topic}: not acknowledged: {exc}", sink=sink, retriable=exc.retriable)


class PendingSends:
    """The deliveries of one batch: done once the broker answered every message."""

    def __init__(self, deliveries: list[Delivery], *, topic: str, sink: str) -> None:
        self._deliveries, self._topic, self._sink = deliveries, topic, sink

    def done(self) -> bool:
        return all(delivery.done() for delivery in self._deliveries)

    def result(self, timeout_s: float) -> None:
        """Wait at most `timeout_s` for every answer; raise SinkError when a message was not stored."""
        deadline_s = time.monotonic() + timeout_s
        try:
            for delivery in self._deliveries:
                delivery.wait(max(deadline_s - time.monotonic(), 0.001))
        except KafkaClientError as exc:
            raise _refused(self._topic, self._sink, exc) from exc


class InFlight:
    """Messages handed to the producer and not acknowledged yet: for outputs the main loop must not wait for, but
    which must be stored before the next commit (alert states, dead letters).

    A message sent under the key of one still in flight replaces it (only a stream's newest alert state matters).
    `settle` waits for all of them, sends again what the broker refused, and then raises SinkError."""

    def __init__(self, producer: Producer, topic: str, *, sink: str, timeout_s: float) -> None:
        self._producer, self._topic, self._sink, self._timeout_s = producer, topic, sink, timeout_s
        self._entries: dict[object, tuple[list[Message], PendingSends | None]] = {}
        self._sent = 0

    def send(self, message: Message, *, key: object = None) -> None:
        """Hand `message` over; never raises: one the producer refused (a broker outage) is kept for `settle`."""
        self._sent += 1
        self._entries[self._sent if key is None else key] = ([message], self._submit([message]))

    def send_many(self, messages: list[Message]) -> None:
        """Hand a batch over as one entry (the scores topic: one per micro-batch, not one per window)."""
        self._sent += 1
        self._entries[self._sent] = (messages, self._submit(messages))

    def settle(self) -> None:
        deadline_s = time.monotonic() + self._timeout_s
        failure: SinkError | None = None
        for key, (message, pending) in list(self._entries.items()):
            try:
                if pending is None:
                    raise SinkError(f"topic {self._topic}: not handed to the producer yet", sink=self._sink)
                pending.result(max(deadline_s - time.monotonic(), 0.001))
            except SinkError as exc:
                failure = exc
                self._entries[key] = (message, self._submit(message))
                continue
            if self._entries[key][1] is pending:
                del self._entries[key]
        if failure is not None:
            raise failure

    def _submit(self, messages: list[Message]) -> PendingSends | None:
        try:
            return submit_all(self._producer, self._topic, messages, sink=self._sink)
        except SinkError as exc:
            log.warning("%s; kept for the next try", exc)
            return None


class KafkaAlertSink:
    """Alert events as JSON (docs/alerts.md), key = stream, header `alert_id`.

    `submit` hands a batch to the producer and returns at once (the delivery queue checks the acknowledgement
    later, so the main loop never waits for the broker); `send` waits for it."""

    def __init__(self, producer: Producer, topic: str, *, timeout_s: float = 10.0) -> None:
        self._producer, self._topic, self._timeout_s = producer, topic, timeout_s
        self.name = f"kafka:{topic}"

    def send(self, alerts: Sequence[Alert]) -> None:
        self.submit(alerts).result(self._timeout_s)

    def submit(self, alerts: Sequence[Alert]) -> PendingSends:
        messages = [(a.stream.encode(), to_json(a).encode(), [("alert_id", a.id.encode())]) for a in alerts]
        return submit_all(self._producer, self._topic, messages, sink=self.name)


def score_to_json(score: WindowScore) -> str:
    """One window's score as compact JSON (the scores topic's value)."""
    data = {
        "stream": score.stream,
        "bundle": score.bundle,
        "start_s": score.start_s,
        "end_s": score.end_s,
        "score": score.score,
        "threshold": score.threshold,
        "surprise": score.surprise if score.surprise is not None and math.isfinite(score.surprise) else None,
        "contributions": list(score.contributions),
    }
    return json.dumps(data, separators=(",", ":"))


class KafkaJsonSink(Generic[T]):
    """Items as compact JSON, key = stream: the scores, codes and cleaned-windows topics (`encode` gives the JSON,
    e.g. `score_to_json`). `send` waits for the broker's acknowledgements; with `pipelined` it only hands the
    batch to the producer and `settle` waits (the daemon settles before every commit: a broker outage pauses commits
    instead of ending serve)."""

    def __init__(self, producer: Producer, topic: str, encode: Callable[[T], str], *, timeout_s: float = 10.0,
                 pipelined: bool = False) -> None:  # fmt: skip
        self._producer, self._topic, self._encode, self._timeout_s = producer, topic, encode, timeout_s
        self.name = f"kafka:{topic}"
        self._in_flight = InFlight(producer, topic, sink=self.name, timeout_s=timeout_s) if pipelined else None

    def send(self, items: Sequence[T]) -> None:
        messages: list[Message] = [(item.stream.encode(), self._encode(item).encode(), []) for item in items]
        if self._in_flight is None:
            send_all(self._producer, self._topic, messages, sink=self.name, timeout_s=self._timeout_s)
            return
        self._in_flight.send_many(messages)

    def settle(self) -> None:
        """Wait for every batch handed over; a refused one is sent again and SinkError raised (no commit now)."""
        if self._in_flight is not None:
            self._in_flight.settle()


def code_to_json(code: VectorCode) -> str:
    data = {
        "stream": code.stream,
        "bundle": code.bundle,
        "bundle_version": code.bundle_version,
        "start_s": code.start_s,
        "end_s": code.end_s,
        "code": [round(v, 7) for v in code.code],
    }
    return json.dumps(data, separators=(",", ":"))


def cleaned_to_json(window: CleanedWindow) -> str:
    data: dict[str, Any] = {
        "stream": window.stream,
        "bundle": window.bundle,
        "bundle_version": window.bundle_version,
        "start_s": window.start_s,
        "end_s": window.end_s,
    }
    if window.values:
        data["values"] = {k: [round(v, 7) for v in vs] for k, vs in window.values.items()}
    else:
        data["vector"] = [round(v, 5) for v in window.vector]
    return json.dumps(data, separators=(",", ":"))


class KafkaDeadLetterSink:
    """Records that could not be used: value = the original payload, headers `reason`, `message`, `source` and,
    when `source` is a Kafka position (`kafka:<topic>:<partition>:<offset>`, see `sources.decode.kafka_source`),
    `source_topic`, `source_partition`, `source_offset`.

    With `pipelined`, `send` only hands the letters to the producer and `settle` waits for the acknowledgements (the
    daemon settles before every commit, so no offset is committed past a letter the broker does not have, and a
    broker hiccup pauses commits instead of stopping the daemon); otherwise `send` waits."""

    def __init__(self, producer: Producer, topic: str, *, timeout_s: float = 10.0, pipelined: bool = False) -> None:
        self._producer, self._topic, self._timeout_s = producer, topic, timeout_s
        self.name = f"kafka:{topic}"
        self._in_flight = InFlight(producer, topic, sink=self.name, timeout_s=timeout_s) if pipelined else None

    def send(self, letters: Sequence[DeadLetter]) -> None:
        # Keyed by source (a Kafka position or a stream id): a letter without a payload (an empty message) is
        # then still a valid Kafka message.
        messages: list[Message] = [
            (d.source.encode(), payload_bytes(d.payload), dead_letter_headers(d)) for d in letters
        ]
        if self._in_flight is None:
            send_all(self._producer, self._topic, messages, sink=self.name, timeout_s=self._timeout_s)
            return
        for message in messages:
            self._in_flight.send(message)

    def settle(self) -> None:
        """Wait until every letter sent is acknowledged; raises SinkError when one is not (it is sent again)."""
        if self._in_flight is not None:
            self._in_flight.settle()


def payload_bytes(payload: str | None) -> bytes | None:
    """The original bytes of a `DeadLetter.payload` (the inverse of `sources.decode.payload_text`).

    >>> payload_bytes("base64:/wA="), payload_bytes('{"ts": 1}')
    (b'\\xff\\x00', b'{"ts": 1}')
    """
    if payload is None:
        return None
    if payload.startswith(BASE64_PREFIX):
        return base64.b64decode(payload[len(BASE64_PREFIX) :])
    return payload.encode("utf-8")


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [("reason", letter.reason), ("message", letter.message[:1000]), ("source", letter.source)]
    parts = letter.source.split(":")
    if len(parts) == 4 and parts[0] == "kafka":
        headers += [("source_topic", parts[1]), ("source_partition", parts[2]), ("source_offset", parts[3])]
    return [(name, value.encode("utf-8")) for name, value in headers]


# --- alert state --------------------------------------------------------------------------------------------------


class KafkaStateStore:
    """Publishes per-stream alert state to a compacted topic, keyed by stream.

    `save` only hands the states to the producer, so the main loop never waits for the broker; `settle` waits for
    the acknowledgements. The daemon settles before every commit: no offset is committed past a state change that is
    not stored (a state the broker refused is sent again, unless a newer one of its stream is on its way)."""

    def __init__(self, producer: Producer, topic: str, *, timeout_s: float = 10.0) -> None:
        self._producer, self._topic, self._timeout_s = producer, topic, timeout_s
        self.name = f"kafka:{topic}"
        self._in_flight = InFlight(producer, topic, sink=self.name, timeout_s=timeout_s)

    def save(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Publish each stream's state (stream -> `StreamAlertState.to_dict()`); returns without waiting."""
        for stream, state in states.items():
            value = json.dumps(state, separators=(",", ":")).encode()
            self._in_flight.send((stream.encode(), value, []), key=stream)

    def settle(self) -> None:
        """Wait until every saved state is acknowledged; raises SinkError when one is not (sent again)."""
        self._in_flight.settle()

    def delete(self, streams: Iterable[str]) -> None:
        """Tombstones: compaction forgets these streams' state."""
        messages: list[Message] = [(stream.encode(), None, []) for stream in streams]
        send_all(self._producer, self._topic, messages, sink=self.name, timeout_s=self._timeout_s)


def load_state(client_factory: ClientFactory, topic: str, *, timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """Read `topic` whole (beginning to the end offsets at the call): stream -> its latest state dict.

    Tombstones delete; a value that is not a JSON object is logged and skipped (that stream starts fresh).
    Raises SinkError when the end is not reached within `timeout_s`.
    """
    try:
        read = client_factory().read_topic(topic, timeout_s=timeout_s)
    except KafkaClientError as exc:
        raise SinkError(f"could not read state topic {topic}: {exc}", sink=f"kafka:{topic}") from exc
    if read is None:
        log.info("state topic %s does not exist yet: every stream starts fresh", topic)
        return {}
    state: dict[str, dict[str, Any]] = {}
    for key, value in read:
        _apply(state, key, value)
    log.info("loaded alert state of %d streams", len(state))
    return state


def _apply(state: dict[str, dict[str, Any]], key: bytes | None, value: bytes | None) -> None:
    if key is None:
        return
    stream = key.decode("utf-8", errors="replace")
    if value is None:
        state.pop(stream, None)
        return
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        state[stream] = parsed
    else:
        log.warning("state of stream %s is not a JSON object; it starts fresh", stream)
        state.pop(stream, None)
