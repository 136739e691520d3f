"""Kafka sinks against the real test broker: what lands on the alerts, scores, dead-letter and state topics."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from ae_monitor.config import KafkaConnectionConfig
from ae_monitor.errors import RecordError, SinkError
from ae_monitor.records import Alert, DeadLetter, WindowScore
from ae_monitor.sinks.jsonl import to_json
from ae_monitor.sinks.kafka import (
    KafkaAlertSink,
    KafkaDeadLetterSink,
    KafkaJsonSink,
    KafkaStateStore,
    admin_factory,
    compacted,
    ensure_topics,
    load_state,
    payload_bytes,
    producer_factory,
    score_to_json,
    send_all,
    state_consumer_factory,
)
from ae_monitor.sources.decode import dead_letter, decode_message, payload_text

pytestmark = pytest.mark.kafka


@pytest.fixture
def conn(kafka_bootstrap: str, client_library: str) -> KafkaConnectionConfig:
    """ae_monitor's connection settings, once per client library (every test here runs against both)."""
    return KafkaConnectionConfig(bootstrap_servers=(kafka_bootstrap,), client_id="ae-monitor-sink-tests",
                                 client=client_library)  # fmt: skip


@pytest.fixture
def producer(conn: KafkaConnectionConfig) -> Iterator[Any]:
    client = producer_factory(conn, send_timeout_s=10)()
    yield client
    client.close()


def _read(kafka_client: Callable[..., Any], topic: str, count: int, timeout_s: float = 15.0) -> list[Any]:
    consumer = kafka_client(KafkaConsumer, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    return records


def _alert(stream: str, status: str = "firing", **fields: Any) -> Alert:
    values: dict[str, Any] = {
        "id": f"id-{stream}",
        "status": status,
        "stream": stream,
        "bundle_name": "pump",
        "bundle_version": "abc123",
        "event_time_s": 1732600000.0,
        "detection_time_s": 1732600012.5,
        "peak_score": 3.0,
        "mean_score": 2.5,
        "threshold": 1.5,
        "severity": 2.0,
        "tail_probability": 1e-4,
        "top_contributors": (("vibration", 0.7), ("current", 0.2)),
    }
    return Alert(**{**values, **fields})


def test_alerts_topic_gets_the_alert_json_keyed_by_stream_with_the_alert_id_header(
    producer: Any, kafka_topic: Callable[..., str], kafka_client: Callable[..., Any]
) -> None:
    topic = kafka_topic(1)
    alerts = [_alert("pump-1"), _alert("pump-2"), _alert("pump-1", "resolved", ends_at_s=1732600060.0)]
    KafkaAlertSink(producer, topic, timeout_s=10).send(alerts)
    records = _read(kafka_client, topic, 3)
    assert [r.key for r in records] == [b"pump-1", b"pump-2", b"pump-1"]
    assert [r.value.decode() for r in records] == [to_json(a) for a in alerts]
    assert [dict(r.headers)["alert_id"] for r in records] == [b"id-pump-1", b"id-pump-2", b"id-pump-1"]
    assert json.loads(records[2].value)["status"] == "resolved"


def test_scores_topic_gets_one_json_message_per_window(
    producer: Any, kafka_topic: Callable[..., str], kafka_client: Callable[..., Any]
) -> None:
    topic = kafka_topic(1)
    scores = [
        WindowScore("pump-1", "pump", 10.0, 70.0, 0.8, 1.5, (0.5, 0.5), surprise=0.7),
        WindowScore("fan", "fan", 0, 1, 2, 1, ()),
    ]
    KafkaJsonSink(producer, topic, score_to_json).send(scores)
    records = _read(kafka_client, topic, 2)
    assert records[0].key == b"pump-1"
    assert json.loads(records[0].value) == {
        "stream": "pump-1",
        "bundle": "pump",
        "start_s": 10.0,
        "end_s": 70.0,
        "score": 0.8,
        "threshold": 1.5,
        "surprise": 0.7,
        "contributions": [0.5, 0.5],
    }
    assert json.loads(records[1].value)["surprise"] is None  # none known (or not finite): null, never Infinity


def test_dead_letters_keep_the_original_bytes_and_carry_the_reason_and_source_in_headers(
    producer: Any, kafka_topic: Callable[..., str], kafka_client: Callable[..., Any]
) -> None:
    topic = kafka_topic(1)
    raw = b'{"stream": "s", "ts": "soon", "values": {"a": 1}}'
    with pytest.raises(RecordError) as info:
        decode_message(None, raw, [])
    pcm = b"\xff\x00\x01"  # not UTF-8: kept as base64 in the letter, restored on the topic
    letters = [
        dead_letter(info.value, value=raw, topic="sensors", partition=2, offset=41),
        DeadLetter(source="pump-3", reason="channel_mismatch", message="channels differ", payload=payload_text(pcm)),
    ]
    KafkaDeadLetterSink(producer, topic).send(letters)
    first, second = _read(kafka_client, topic, 2)
    assert first.value == raw
    headers = {k: v.decode() for k, v in first.headers}
    assert headers["reason"] == "invalid_field"
    assert "'ts' must be a finite number" in headers["message"]
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == ("sensors", "2", "41")
    assert second.value == pcm
    assert {k for k, _ in second.headers} == {"reason", "message", "source"}


def test_a_pipelined_dead_letter_sink_hands_letters_over_and_settle_waits_for_the_broker(
    producer: Any, kafka_client: Callable[..., Any], kafka_topic: Callable[..., str]
) -> None:
    topic = kafka_topic(1)
    sink = KafkaDeadLetterSink(producer, topic, pipelined=True)
    sink.send([DeadLetter(source="kafka:sensors:0:7", reason="empty_value", message="the message has no value")])
    sink.settle()
    (letter,) = _read(kafka_client, topic, 1)
    assert (letter.key, letter.value) == (b"kafka:sensors:0:7", None)  # keyed by source, so no payload is fine


def test_payload_text_and_payload_bytes_round_trip_any_bytes() -> None:
    for raw in [b"", b"plain", b"\xff\xfe\x00", "é".encode(), b"base64:looks-encoded"]:
        assert payload_bytes(payload_text(raw)) == raw
    assert payload_bytes(payload_text(None)) is None


def test_state_store_round_trip_on_a_compacted_topic_latest_wins_and_tombstones_delete(
    producer: Any, conn: KafkaConnectionConfig
) -> None:
    topic = f"ae-monitor-test-state-{uuid.uuid4().hex[:12]}"
    assert ensure_topics(admin_factory(conn), {topic: compacted(partitions=2)}) == [topic]
    assert ensure_topics(admin_factory(conn), {topic: compacted(partitions=2)}) == []  # already there
    try:
        store = KafkaStateStore(producer, topic)
        store.save({"pump-1": {"version": 1, "n": 1}, "pump-2": {"version": 1, "n": 1}, "pump-3": {"n": 0}})
        store.save({"pump-1": {"version": 1, "n": 2}})
        store.settle()  # save hands states to the producer; settle returns once the broker has them all
        store.delete(["pump-2"])
        assert load_state(state_consumer_factory(conn), topic) == {"pump-1": {"version": 1, "n": 2}, "pump-3": {"n": 0}}
        assert _cleanup_policy(conn, topic) == "compact"
    finally:
        _delete_topic(conn, topic)


def test_a_state_the_producer_refuses_is_a_sink_error_naming_the_topic(producer: Any) -> None:
    store = KafkaStateStore(producer, "ae-monitor-test-unused")

    def save_and_settle() -> None:
        store.save({"pump-1": {"blob": "x" * 2_000_000}})  # over the producer's max_request_size (1 MiB)
        store.settle()

    with pytest.raises(SinkError, match="ae-monitor-test-unused"):
        save_and_settle()


def test_load_state_of_a_missing_topic_is_empty(conn: KafkaConnectionConfig) -> None:
    assert load_state(state_consumer_factory(conn), f"ae-monitor-test-absent-{uuid.uuid4().hex[:12]}") == {}


def test_a_message_the_producer_refuses_raises_a_sink_error_that_says_whether_to_retry(producer: Any) -> None:
    too_large = b"x" * 2_000_000  # over the producer's max_request_size (1 MiB)
    with pytest.raises(SinkError, match="not acknowledged") as info:
        send_all(producer, "ae-monitor-test-unused", [(b"k", too_large, [])], sink="kafka:test", timeout_s=5)
    assert info.value.sink == "kafka:test"
    assert not info.value.retriable


def _cleanup_policy(conn: KafkaConnectionConfig, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=list(conn.bootstrap_servers))
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return str(described["topic"][topic]["cleanup.policy"]["value"])
    finally:
        admin.close()


def _delete_topic(conn: KafkaConnectionConfig, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=list(conn.bootstrap_servers))
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
