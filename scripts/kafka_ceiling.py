#!/usr/bin/env python3
"""The plain consume + `json.loads` ceiling of a Kafka client library: how fast one bare Python process reads a topic.

Imports the client library (kafka-python, or confluent-kafka with `--client confluent`) and the standard library
only, so nothing else in the process (torch, numpy, a model) slows its allocator or garbage collector:
`scripts/bench_serve.py` and `scripts/bench_clients.py` run it as a subprocess and compare `serve` with it.

    .venv/bin/python scripts/kafka_ceiling.py BOOTSTRAP TOPIC RECORDS [--max-poll-records 2000]
                                              [--client kafka-python|confluent]

Prints one JSON object: {"msg_per_s": ..., "seconds": ..., "records": ...}. Rate = records / (first non-empty
poll -> last record parsed); fails when the topic does not hold RECORDS records within 120 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence


def consume(bootstrap: str, topic: str, n: int, max_poll_records: int) -> tuple[float, float]:
    """(msg/s, seconds) of reading and parsing the first `n` records of `topic` with kafka-python."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=max_poll_records)  # fmt: skip
    seen, started = 0, 0.0
    deadline = time.monotonic() + 120
    try:
        while seen < n and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=500)
            if batches and not seen:
                started = time.perf_counter()
            for records in batches.values():
                for record in records:
                    json.loads(record.value)
                seen += len(records)
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    if seen < n:
        raise RuntimeError(f"the ceiling consumer read {seen} of {n} records in 120 s")
    return n / seconds, seconds


def consume_confluent(bootstrap: str, topic: str, n: int, max_poll_records: int) -> tuple[float, float]:
    """The same with confluent-kafka: batches of `consume(max_poll_records)`, as ae_monitor's client takes them."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    # fetch.queue.backoff.ms as ae_monitor's consumer sets it (kafka_client/confluent.py): librdkafka's default
    # pauses fetching for 1 s whenever 100,000 messages wait in its queue.
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ae-monitor-ceiling",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen, started = 0, 0.0
    deadline = time.monotonic() + 120
    try:
        while seen < n and time.monotonic() < deadline:
            messages = consumer.consume(max_poll_records, timeout=0.5)
            if messages and not seen:
                started = time.perf_counter()
            for message in messages:
                if message.error() is None:
                    json.loads(message.value())
                    seen += 1
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    if seen < n:
        raise RuntimeError(f"the ceiling consumer read {seen} of {n} records in 120 s")
    return n / seconds, seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("records", type=int)
    parser.add_argument("--max-poll-records", type=int, default=2000)
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    args = parser.parse_args(argv)
    read = consume_confluent if args.client == "confluent" else consume
    rate, seconds = read(args.bootstrap, args.topic, args.records, args.max_poll_records)
    print(json.dumps({"msg_per_s": rate, "seconds": seconds, "records": args.records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
