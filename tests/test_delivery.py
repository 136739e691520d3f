"""The delivery queue: a sink outage loses no alert, keeps order, holds back offset commits and is bounded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ae_monitor.errors import SinkError
from ae_monitor.metrics import Metrics
from ae_monitor.records import Alert
from ae_monitor.sinks.delivery import Backoff, DeliveryQueue


class FlakySink:
    """Takes alerts into `got`, except while `down` (raises SinkError); counts `calls`."""

    def __init__(self, name: str = "flaky") -> None:
        self.name, self.down, self.calls = name, False, 0
        self.got: list[str] = []

    def send(self, alerts: Sequence[Alert]) -> None:
        self.calls += 1
        if self.down:
            raise SinkError("receiver is down", sink=self.name)
        self.got.extend(a.id for a in alerts)


class TickingSink(FlakySink):
    def __init__(self) -> None:
        super().__init__("ticking")
        self.ticks: list[float] = []

    def tick(self, now_s: float) -> None:
        self.ticks.append(now_s)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _alerts(*ids: str) -> list[Alert]:
    return [Alert(i, "firing", "s", "b", "v", 0.0, 1.0, 2.0, 2.0, 1.0, 2.0, 0.01) for i in ids]


def _queue(*sinks: FlakySink, clock: Clock, max_pending: int = 100, **kwargs: Any) -> DeliveryQueue:
    backoff = Backoff(initial_s=1.0, max_s=8.0)
    return DeliveryQueue({s.name: s for s in sinks}, max_pending=max_pending, backoff=backoff, clock=clock, **kwargs)


def test_alerts_go_straight_through_when_every_sink_takes_them() -> None:
    sink = FlakySink()
    queue = _queue(sink, clock=Clock())
    queue.offer(_alerts("a", "b"))
    assert sink.got == ["a", "b"]
    assert queue.idle
    assert queue.pending == 0


def test_an_outage_keeps_alerts_queued_and_the_queue_not_idle_then_delivers_them_in_order() -> None:
    sink, clock = FlakySink(), Clock()
    queue = _queue(sink, clock=clock)
    sink.down = True
    queue.offer(_alerts("a"))
    clock.now_s = 5.0
    queue.offer(_alerts("b", "c"))
    assert not queue.idle  # the daemon must not commit offsets now
    assert queue.pending == 3
    sink.down = False
    clock.now_s = 100.0
    queue.retry()
    assert sink.got == ["a", "b", "c"]
    assert queue.idle


def test_new_alerts_wait_behind_queued_ones_so_order_is_kept() -> None:
    sink, clock = FlakySink(), Clock()
    queue = _queue(sink, clock=clock)
    sink.down = True
    queue.offer(_alerts("a"))
    sink.down = False  # back up, but the lane is still backing off: "b" must not overtake "a"
    queue.offer(_alerts("b"))
    assert sink.got == []
    clock.now_s = 100.0
    queue.retry()
    assert sink.got == ["a", "b"]


def test_retry_waits_for_the_exponential_backoff() -> None:
    sink, clock = FlakySink(), Clock()
    queue = DeliveryQueue(
        {"flaky": sink}, max_pending=10, backoff=Backoff(initial_s=1.0, max_s=8.0), clock=clock, rng=lambda: 1.0
    )
    sink.down = True
    queue.offer(_alerts("a"))  # failure 1: next try after 1 s (rng 1.0: the whole step)
    attempts = []
    for now_s in [0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0]:
        calls = sink.calls
        queue.retry(now_s)
        if sink.calls > calls:
            attempts.append(now_s)
    assert attempts == [1.0, 3.0, 7.0]  # delays 1, 2, 4: doubling


def test_backoff_is_capped_and_jittered_within_half_to_the_whole_step() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0)
    assert [backoff.delay_s(n, rng=lambda: 1.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay_s(3, rng=lambda: 0.0) == 2.0


def test_one_failing_sink_does_not_hold_back_the_others() -> None:
    up, down = FlakySink("up"), FlakySink("down")
    down.down = True
    queue = _queue(up, down, clock=Clock())
    queue.offer(_alerts("a", "b"))
    assert up.got == ["a", "b"]
    assert queue.pending_by_sink() == {"up": 0, "down": 2}
    assert not queue.idle


def test_offer_raises_once_a_lane_holds_more_than_max_pending_and_keeps_the_alerts() -> None:
    sink, clock = FlakySink(), Clock()
    queue = _queue(sink, clock=clock, max_pending=3)
    sink.down = True
    queue.offer(_alerts("a", "b", "c"))
    assert not queue.full
    with pytest.raises(SinkError, match="more than 3 alerts wait") as info:
        queue.offer(_alerts("d"))
    assert info.value.sink == "flaky"
    assert queue.full
    assert queue.pending == 4  # nothing dropped
    sink.down, clock.now_s = False, 100.0
    queue.retry()
    assert sink.got == ["a", "b", "c", "d"]
    assert not queue.full


def test_large_backlogs_are_sent_in_batches_in_order() -> None:
    sink, clock = FlakySink(), Clock()
    queue = _queue(sink, clock=clock, batch_size=2)
    sink.down = True
    queue.offer(_alerts("a", "b", "c", "d", "e"))
    sink.down, sink.calls, clock.now_s = False, 0, 100.0
    queue.retry()
    assert sink.got == ["a", "b", "c", "d", "e"]
    assert sink.calls == 3


def test_failures_and_pending_alerts_are_counted_per_sink() -> None:
    registry = CollectorRegistry()
    sink = FlakySink()
    queue = _queue(sink, clock=Clock(), metrics=Metrics(registry))
    sink.down = True
    queue.offer(_alerts("a", "b"))
    assert registry.get_sample_value("ae_monitor_sink_failures_total", {"sink": "flaky"}) == 1.0
    assert registry.get_sample_value("ae_monitor_alerts_pending", {"sink": "flaky"}) == 2.0


def test_drain_delivers_what_is_pending_ignoring_the_backoff() -> None:
    sink, clock = FlakySink(), Clock()
    queue = _queue(sink, clock=clock)
    sink.down = True
    queue.offer(_alerts("a"))
    sink.down = False
    assert queue.drain(timeout_s=1.0)
    assert sink.got == ["a"]


def test_drain_gives_up_at_the_timeout_and_says_so() -> None:
    sink, clock = FlakySink(), Clock()
    queue = _queue(sink, clock=clock)
    sink.down = True
    queue.offer(_alerts("a"))

    def sleep(seconds: float) -> None:
        clock.now_s += seconds

    assert not queue.drain(timeout_s=5.0, sleep=sleep)
    assert queue.pending == 1
    assert clock.now_s >= 5.0


def test_retry_lets_refreshing_sinks_re_send_active_alerts() -> None:
    sink = TickingSink()
    queue = _queue(sink, clock=Clock())
    queue.retry(42.0)
    assert sink.ticks == [42.0]


# -- pipelined sinks: batches in flight until acknowledged ----------------------------------------------------------


class Ack:
    """One submitted batch; the test decides when and how the receiver answers."""

    def __init__(self) -> None:
        self.answered, self.error = False, False

    def done(self) -> bool:
        return self.answered

    def result(self, timeout_s: float) -> None:
        if not self.answered:
            raise SinkError("no answer in time", sink="pipelined")
        if self.error:
            raise SinkError("receiver refused the batch", sink="pipelined")


class PipelinedSink:
    name = "pipelined"

    def __init__(self) -> None:
        self.submitted: list[tuple[list[str], Ack]] = []

    def send(self, alerts: Sequence[Alert]) -> None:
        raise AssertionError("a pipelined sink is submitted to, never sent to")

    def submit(self, alerts: Sequence[Alert]) -> Ack:
        ack = Ack()
        self.submitted.append(([a.id for a in alerts], ack))
        return ack


def test_a_pipelined_sink_holds_commits_back_until_the_receiver_acknowledges() -> None:
    sink = PipelinedSink()
    queue = DeliveryQueue({sink.name: sink}, max_pending=100, clock=Clock())
    queue.offer(_alerts("a", "b"))
    assert [ids for ids, _ in sink.submitted] == [["a", "b"]]  # handed over at once, without waiting
    assert not queue.idle
    assert queue.pending == 2
    queue.retry()
    assert not queue.idle  # no answer yet: retry does not wait for one
    sink.submitted[0][1].answered = True
    queue.retry()
    assert queue.idle
    assert queue.pending == 0


def test_a_refused_batch_and_every_batch_after_it_are_sent_again_in_order() -> None:
    sink, clock = PipelinedSink(), Clock()
    queue = DeliveryQueue({sink.name: sink}, max_pending=100, backoff=Backoff(initial_s=1.0, max_s=1.0), clock=clock)
    queue.offer(_alerts("fire"))
    queue.offer(_alerts("resolve"))
    first, second = (ack for _, ack in sink.submitted)
    first.answered = first.error = True
    second.answered = True  # the later batch arrived, but it must not settle ahead of the one refused before it
    queue.retry()
    assert queue.pending == 2
    assert not queue.idle
    clock.now_s = 10.0
    queue.retry()
    assert [ids for ids, _ in sink.submitted[2:]] == [["fire", "resolve"]]


def test_drain_waits_for_the_acknowledgements_in_flight() -> None:
    sink = PipelinedSink()
    queue = DeliveryQueue({sink.name: sink}, max_pending=100, clock=Clock())
    queue.offer(_alerts("a"))
    sink.submitted[0][1].answered = True
    assert queue.drain(timeout_s=1.0)
    assert queue.idle
