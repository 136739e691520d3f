"""Stage 7, sink: the delivery queue that makes a sink outage lose no alert.

`DeliveryQueue` fans alert events out to every sink. Each sink has its own FIFO lane: what a sink failed to take
waits there, in order, and is tried again by `retry(now_s)` with exponential backoff (the sink's own, when it has
one, and never sooner than a receiver's Retry-After within that backoff's cap), while the other sinks go on
receiving. This is the only place alerts are retried: sinks make one attempt per call and never sleep. Nothing is
ever dropped: a sink that keeps failing (even one that rejects a payload outright, HTTP 4xx) keeps its alerts, logs
every failure and counts it in `ae_monitor_sink_failures_total{sink}`.

Contract with the daemon (at-least-once):

- commit Kafka offsets only while `idle` is true, so no offset is committed past an alert that is still queued;
- `offer` keeps the alerts it is given even when it raises; it raises SinkError once a lane holds more than
  `max_pending` alerts, which tells the daemon to stop consuming (pause) and call `retry` until `full` is false;
- on shutdown, `drain(timeout_s)` tries every lane until it is empty or the time is up.

A sink that can hand alerts over without waiting (`Submitting`: the Kafka alerts topic) is pipelined: its batches
wait in flight until the broker acknowledges them, checked without blocking by `retry` (so the main loop never
waits for a round trip), and the lane is only `idle` once nothing is in flight. When an in-flight batch fails, it
and every batch sent after it go back to the front of the lane, in order, so a sink never sees a `resolved` event
settle before the `firing` one it follows.

A retried batch may reach a sink twice (say a webhook that failed after its first alerts); receivers deduplicate
by the alert id, which is deterministic. Single-threaded: call it from the main loop only.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol, runtime_checkable

from prometheus_client import Counter, Gauge

from ae_monitor.errors import SinkError
from ae_monitor.records import Alert
from ae_monitor.sinks import AlertSink

log = logging.getLogger(__name__)


class DeliveryMetrics(Protocol):
    """What the queue updates; `ae_monitor.metrics.Metrics` has both (passed in, so sinks do not import it)."""

    sink_failures: Counter
    alerts_pending: Gauge


@runtime_checkable
class Refreshing(Protocol):
    """A sink that must re-send active alerts now and then (Alertmanager); `retry` calls its `tick`."""

    def tick(self, now_s: float) -> None: ...


class Pending(Protocol):
    """A batch handed to a sink, on its way."""

    def done(self) -> bool: ...

    def result(self, timeout_s: float) -> None:
        """Wait at most `timeout_s` for the acknowledgement; raise SinkError when the batch was not delivered."""


@runtime_checkable
class Submitting(Protocol):
    """A sink that hands a batch over and acknowledges it later (see the module docstring)."""

    def submit(self, alerts: Sequence[Alert]) -> Pending: ...


@dataclass(frozen=True)
class Backoff:
    """Delay before retrying a lane after `failures` consecutive failures: exponential, capped, half jittered
    (at least half the step, so a busy main loop does not hammer a receiver that is down)."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def delay_s(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        step = min(self.max_s, self.initial_s * 2.0 ** max(failures - 1, 0))
        return step * (0.5 + 0.5 * rng())


@runtime_checkable
class BackingOff(Protocol):
    """A sink with its own retry pacing (the HTTP sinks: `backoff_initial_s`, `backoff_max_s` of their config)."""

    @property
    def backoff(self) -> Backoff: ...


@dataclass
class _Lane:
    sink: AlertSink
    queue: deque[Alert] = field(default_factory=deque)
    in_flight: deque[tuple[list[Alert], Pending]] = field(default_factory=deque)
    failures: int = 0
    next_attempt_s: float = -math.inf

    @property
    def waiting(self) -> int:
        return len(self.queue) + sum(len(batch) for batch, _ in self.in_flight)


class DeliveryQueue:
    """Per-sink FIFO retry lanes in front of `sinks` (name -> sink)."""

    def __init__(
        self,
        sinks: Mapping[str, AlertSink],
        *,
        max_pending: int,
        backoff: Backoff = Backoff(),
        batch_size: int = 500,
        metrics: DeliveryMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._lanes = {name: _Lane(sink) for name, sink in sinks.items()}
        self._max_pending, self._backoff, self._batch_size = max_pending, backoff, batch_size
        self._metrics, self._clock, self._rng = metrics, clock, rng

    @property
    def pending(self) -> int:
        """Alert deliveries waiting, summed over sinks (an alert two sinks missed counts twice)."""
        return sum(lane.waiting for lane in self._lanes.values())

    def pending_by_sink(self) -> dict[str, int]:
        return {name: lane.waiting for name, lane in self._lanes.items()}

    @property
    def idle(self) -> bool:
        """Nothing waits for any sink, nor for an acknowledgement: offsets may be committed."""
        return all(not lane.queue and not lane.in_flight for lane in self._lanes.values())

    @property
    def full(self) -> bool:
        return any(lane.waiting > self._max_pending for lane in self._lanes.values())

    def offer(self, alerts: Sequence[Alert]) -> None:
        """Queue `alerts` for every sink and deliver them now where the lane is not backing off.

        The alerts are kept even when this raises SinkError (a lane over `max_pending`): do not offer them again.
        """
        if alerts:
            now_s = self._clock()
            for name, lane in self._lanes.items():
                lane.queue.extend(alerts)
                if now_s >= lane.next_attempt_s:
                    self._deliver(name, lane, now_s)
            self._update_gauges()
        self._raise_if_full()

    def retry(self, now_s: float | None = None) -> None:
        """Re-attempt every lane whose backoff has passed; let refreshing sinks re-send. Never raises."""
        now_s = self._clock() if now_s is None else now_s
        for name, lane in self._lanes.items():
            self._settle(name, lane, now_s, timeout_s=None)
            if lane.queue and now_s >= lane.next_attempt_s:
                self._deliver(name, lane, now_s)
            if isinstance(lane.sink, Refreshing) and not lane.queue:
                lane.sink.tick(now_s)
        self._update_gauges()

    def drain(self, timeout_s: float, *, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Try every lane, backoff ignored, until all are empty or `timeout_s` passed; True when idle."""
        deadline_s = self._clock() + timeout_s
        while not self.idle:
            for name, lane in self._lanes.items():
                if lane.queue:
                    self._deliver(name, lane, self._clock())
                self._settle(name, lane, self._clock(), timeout_s=max(0.0, deadline_s - self._clock()))
            remaining_s = deadline_s - self._clock()
            if self.idle or remaining_s <= 0:
                break
            sleep(min(remaining_s, self._backoff.delay_s(1, self._rng)))
        self._update_gauges()
        return self.idle

    def _deliver(self, name: str, lane: _Lane, now_s: float) -> None:
        while lane.queue:
            batch = list(islice(lane.queue, self._batch_size))
            try:
                if isinstance(lane.sink, Submitting):
                    lane.in_flight.append((batch, lane.sink.submit(batch)))
                else:
                    lane.sink.send(batch)
            except SinkError as exc:
                self._failed(name, lane, now_s, exc)
                return
            for _ in batch:
                lane.queue.popleft()
        if not lane.in_flight:
            self._recovered(name, lane)

    def _settle(self, name: str, lane: _Lane, now_s: float, *, timeout_s: float | None) -> None:
        """Retire acknowledged in-flight batches, oldest first; without `timeout_s`, only those already done."""
        while lane.in_flight:
            pending = lane.in_flight[0][1]
            if timeout_s is None and not pending.done():
                return
            try:
                pending.result(timeout_s or 0.0)
            except SinkError as exc:
                # This batch and all sent after it go back, in order (some of them may arrive twice).
                lane.queue.extendleft(reversed([a for sent, _ in lane.in_flight for a in sent]))
                lane.in_flight.clear()
                self._failed(name, lane, now_s, exc)
                return
            lane.in_flight.popleft()
        if not lane.queue:
            self._recovered(name, lane)

    def _recovered(self, name: str, lane: _Lane) -> None:
        if lane.failures:
            log.info("sink %s delivers again after %d failed attempts", name, lane.failures)
        lane.failures, lane.next_attempt_s = 0, -math.inf

    def _failed(self, name: str, lane: _Lane, now_s: float, exc: SinkError) -> None:
        lane.failures += 1
        backoff = lane.sink.backoff if isinstance(lane.sink, BackingOff) else self._backoff
        delay_s = backoff.delay_s(lane.failures, self._rng)
        if exc.retry_after_s is not None:  # the receiver said how long: wait that, within the sink's own cap
            delay_s = min(max(delay_s, exc.retry_after_s), backoff.max_s)
        lane.next_attempt_s = now_s + delay_s
        if self._metrics is not None:
            self._metrics.sink_failures.labels(sink=name).inc()
        level = logging.WARNING if exc.retriable else logging.ERROR
        log.log(level, "%s; %d alerts wait for it, next try in %.1f s", exc, len(lane.queue), delay_s)

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            for name, lane in self._lanes.items():
                self._metrics.alerts_pending.labels(sink=name).set(lane.waiting)

    def _raise_if_full(self) -> None:
        full = [name for name, lane in self._lanes.items() if lane.waiting > self._max_pending]
        if full:
            raise SinkError(
                f"more than {self._max_pending} alerts wait for delivery; they are kept, stop consuming and call "
                "retry() until the sink recovers",
                sink=",".join(full),
            )
