"""At-least-once bookkeeping: a partition is committed up to its longest prefix of completed records."""

from __future__ import annotations

from ae_monitor.sources.offsets import OffsetTracker

P0, P1 = ("t", 0), ("t", 1)


def test_nothing_is_committable_until_the_first_record_completes() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add(P0, 10, "a")
    tracker.add(P0, 11, "b")
    assert tracker.committable(lambda marker: False) == {}
    assert tracker.committable(lambda marker: marker == "a") == {P0: 11}


def test_a_record_still_waiting_blocks_the_records_after_it() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset, marker in enumerate(["done", "waiting", "done"]):
        tracker.add(P0, offset, marker)
    assert tracker.committable(lambda marker: marker == "done") == {P0: 1}
    assert tracker.pending() == 2


def test_records_without_a_marker_are_complete_already() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add(P0, 5, None)  # e.g. dead-lettered
    assert tracker.committable(lambda marker: False) == {P0: 6}


def test_partitions_advance_independently_and_only_once() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add(P0, 0, "x")
    tracker.add(P1, 7, "y")
    assert tracker.committable(lambda marker: marker == "y") == {P1: 8}
    assert tracker.committable(lambda marker: marker == "y") == {}
    assert tracker.committable(lambda marker: True) == {P0: 1}


def test_every_re_sends_the_committable_offset_of_each_partition() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add(P0, 0, "x")
    tracker.add(P1, 3, "y")
    tracker.committable(lambda marker: True)
    assert tracker.committable(lambda marker: True, every=True) == {P0: 1, P1: 4}


def test_forgotten_partitions_drop_their_bookkeeping() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add(P0, 0, "x")
    tracker.forget([P0])
    assert tracker.pending() == 0
    assert tracker.committable(lambda marker: True, every=True) == {}


def test_the_done_prefix_of_a_waiting_entry_is_committable_when_it_can_be_looked_into() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add(P0, 9, "first poll, done")
    tracker.add(P0, 19, "second poll, done up to offset 14")
    looked_into = {"second poll, done up to offset 14": 14}
    committable = tracker.committable(lambda marker: marker.endswith(", done"), done_below=looked_into.get)
    assert committable == {P0: 14}
    assert tracker.pending() == 1  # the entry stays until all of it is done
