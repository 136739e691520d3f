"""`ae-monitor serve` with a per-step timing trace, for scripts/bench_serve.py's latency breakdown (`--trace`).

Wraps the main loop's stages (poll, process, deliver, alert submit, retry, commit, housekeeping) and the garbage
collector with wall-clock stamps, kept in memory and written as JSON lines to $AE_MONITOR_TRACE when serve returns.
The library itself is unchanged: this is a benchmark harness, and its wrappers add about a microsecond per stage.
Each event also carries the CPU seconds its thread spent in the stage (`time.thread_time`), and `probe` wraps any
further function (bench_serve.py's audio breakdown: decoding, features, forward pass, window aggregation).

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

EVENTS: list[tuple[Any, ...]] = []  # (stage, start wall s, end wall s, detail, thread CPU s)
WATCHED: dict[int, tuple[float, list[str]]] = {}  # librdkafka deliveries of alert batches: submit time, alert ids


def timed(stage: str, fn: Callable[..., Any], detail: Callable[[Sequence[Any], Any], Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.time(), time.thread_time()
        result = fn(*args, **kwargs)
        EVENTS.append((stage, start, time.time(), detail(args, result), time.thread_time() - cpu))
        return result

    return wrapper


def probe(stage: str, owner: Any, name: str) -> None:
    """Stamp every call of `owner.name` (a class's method or a module's function) as `stage`."""
    setattr(owner, name, timed(stage, getattr(owner, name), lambda args, result: None))


def stage_totals(events: Sequence[tuple[Any, ...]]) -> dict[str, tuple[int, float, float]]:
    """Per stage: (calls, wall s, thread CPU s) summed over `events`."""
    totals: dict[str, tuple[int, float, float]] = {}
    for stage, start, end, _, *cpu in events:
        calls, wall, used = totals.get(stage, (0, 0.0, 0.0))
        totals[stage] = (calls + 1, wall + end - start, used + (cpu[0] if cpu else 0.0))
    return totals


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
