"""The test broker is a real Kafka: produce, consume in a group with manual commits, reopen, nothing comes back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import JsonSerializer

pytestmark = pytest.mark.kafka

RECORDS = 100


def _poll(consumer: KafkaConsumer, *, until: Callable[[list[Any]], bool], timeout_s: float) -> list[Any]:
    """Poll until `until(records so far)` holds or `timeout_s` passed; return the records."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not until(received) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            received.extend(batch)
    return received


def _consumer(kafka_client: Callable[..., Any], topic: str, group: str) -> KafkaConsumer:
    return kafka_client(
        KafkaConsumer,
        topic,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        value_deserializer=JsonSerializer(),  # kafka-python 3.x deprecates plain callables
    )


def test_committed_records_are_not_delivered_again_to_the_group(
    kafka_topic: Callable[..., str], kafka_client: Callable[..., Any]
) -> None:
    topic = kafka_topic(3)
    group = f"{topic}-group"
    producer = kafka_client(KafkaProducer, acks="all", value_serializer=JsonSerializer())
    for i in range(RECORDS):
        producer.send(topic, key=str(i).encode(), value={"seq": i})
    producer.flush(timeout=10)

    consumer = _consumer(kafka_client, topic, group)
    records = _poll(consumer, until=lambda got: len(got) >= RECORDS, timeout_s=20.0)
    assert sorted(record.value["seq"] for record in records) == list(range(RECORDS))
    assert {record.partition for record in records} == {0, 1, 2}
    consumer.commit()
    partitions = [TopicPartition(topic, p) for p in range(3)]
    assert sum(consumer.committed(tp) or 0 for tp in partitions) == RECORDS
    consumer.close()

    reopened = _consumer(kafka_client, topic, group)
    redelivered = _poll(reopened, until=lambda _: bool(reopened.assignment()), timeout_s=15.0)
    assert reopened.assignment() == set(partitions), "the reopened consumer rejoined the group"
    redelivered += _poll(reopened, until=lambda _: False, timeout_s=2.0)
    assert redelivered == []
