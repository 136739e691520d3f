#!/usr/bin/env python3
"""The plain kafka-python consume + `json.loads` ceiling: how fast one bare Python process reads a topic.

Imports kafka-python and the standard library only, so nothing else in the process (torch, numpy, a model) slows
its allocator or garbage collector: `scripts/bench_serve.py` runs it as a subprocess and compares `serve` with it.

    .venv/bin/python scripts/kafka_ceiling.py BOOTSTRAP TOPIC RECORDS [--max-poll-records 2000]

Prints one JSON object: {"msg_per_s": ..., "seconds": ..., "records": ...}. Rate = records / (first non-empty
poll -> last record parsed); fails when the topic does not hold RECORDS records within 120 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from kafka import KafkaConsumer


def consume(bootstrap: str, topic: str, n: int, max_poll_records: int) -> tuple[float, float]:
    """(msg/s, seconds) of reading and parsing the first `n` records of `topic`."""
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("records", type=int)
    parser.add_argument("--max-poll-records", type=int, default=2000)
    args = parser.parse_args(argv)
    rate, seconds = consume(args.bootstrap, args.topic, args.records, args.max_poll_records)
    print(json.dumps({"msg_per_s": rate, "seconds": seconds, "records": args.records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
