"""`ae-monitor serve` with a per-step timing trace, for scripts/bench_serve.py's latency breakdown (`--trace`).

Wraps the main loop's stages (poll, process, deliver, alert submit, retry, commit, housekeeping) and the garbage
collector with wall-clock stamps, kept in memory and written as JSON lines to $AE_MONITOR_TRACE when serve returns.
The library itself is unchanged: this is a benchmark harness, and its wrappers add about a microsecond per stage.

    AE_MONITOR_TRACE=trace.jsonl python scripts/serve_traced.py serve --config serve.toml
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ae_monitor import cli
from ae_monitor.serve import loop
from ae_monitor.sinks.kafka import KafkaAlertSink
from ae_monitor.sources.kafka import KafkaSource

EVENTS: list[tuple[Any, ...]] = []  # (stage, start wall s, end wall s, detail)
WATCHED: dict[int, tuple[float, list[str]]] = {}  # librdkafka deliveries of alert batches: submit time, alert ids


def timed(stage: str, fn: Callable[..., Any], detail: Callable[[Sequence[Any], Any], Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        result = fn(*args, **kwargs)
        EVENTS.append((stage, start, time.time(), detail(args, result)))
        return result

    return wrapper


def alert_ids(args: Sequence[Any], result: Any) -> list[str]:
    return [alert.id + ":" + alert.status for alert in args[1]]


def acked(submit: Callable[..., Any]) -> Callable[..., Any]:
    """`submit`, noting when the broker acknowledged the batch's last alert (kafka-python's futures call back on its
    sender thread; list.append is atomic)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, pending = time.time(), submit(*args, **kwargs)
        last = pending._deliveries[-1] if pending._deliveries else None
        future = getattr(last, "_future", None)  # kafka-python; librdkafka's deliveries are called back instead
        if future is not None:
            ids = alert_ids(args, None)
            future.add_both(lambda _: EVENTS.append(("ack", start, time.time(), ids)))
        elif last is not None:
            WATCHED[id(last)] = (start, alert_ids(args, None))
        return pending

    return wrapper


def install() -> None:
    none: Callable[[Sequence[Any], Any], Any] = lambda args, result: None  # noqa: E731
    rows: Callable[[Sequence[Any], Any], Any] = lambda args, polled: sum(c.end_row - c.first_row for c in polled.chunks)  # noqa: E731
    KafkaSource.poll = timed("poll", KafkaSource.poll, rows)  # type: ignore[method-assign]
    loop.Daemon._process = timed("process", loop.Daemon._process, none)  # type: ignore[method-assign]
    loop.deliver = timed("deliver", loop.deliver, lambda args, result: len(args[0].alerts))
    KafkaAlertSink.submit = timed("submit", acked(KafkaAlertSink.submit), alert_ids)  # type: ignore[method-assign]
    loop.Daemon._maybe_commit = timed("commit", loop.Daemon._maybe_commit, none)  # type: ignore[method-assign]
    loop.Daemon._housekeeping = timed("housekeeping", loop.Daemon._housekeeping, none)  # type: ignore[method-assign]
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.time()]
        elif started:
            EVENTS.append(("gc", started[0], time.time(), info.get("generation")))

    gc.callbacks.append(on_gc)
    try:
        from ae_monitor.kafka_client import confluent
    except ImportError:  # confluent-kafka not installed: kafka-python only
        return
    delivered = confluent._Delivery.__call__

    def on_delivery(self: Any, error: Any, message: Any) -> None:
        delivered(self, error, message)
        if (watched := WATCHED.pop(id(self), None)) is not None:
            EVENTS.append(("ack", watched[0], time.time(), watched[1]))

    confluent._Delivery.__call__ = on_delivery  # type: ignore[method-assign]


def main() -> int:
    out = Path(os.environ["AE_MONITOR_TRACE"])
    install()
    try:
        return cli.main(sys.argv[1:])
    finally:
        with out.open("w", encoding="utf-8") as f:
            for event in EVENTS:
                f.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    sys.exit(main())
