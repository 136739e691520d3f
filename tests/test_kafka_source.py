"""How the Kafka source closes a micro-batch: by count, at the end of what is buffered, or when its time budget is
spent (the client is an in-memory stand-in here: the batching is the source's own; real-broker paths: test_serve.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ae_monitor.config import KafkaSourceConfig
from ae_monitor.kafka_client import CommitCallback, Fetched, Partition, RebalanceCallback
from ae_monitor.kafka_client.confluent import GroupConsumer as ConfluentGroupConsumer
from ae_monitor.kafka_client.kafka_python import GroupConsumer as KafkaPythonGroupConsumer
from ae_monitor.records import SampleRows
from ae_monitor.sources.kafka import MAX_BATCH_BYTES, POLL_SLICE_RECORDS, KafkaSource

SLICE_COST_S = 0.020  # what the stand-in's clock advances per poll: the time a slice takes to unpack


class BufferedConsumer:
    """A consumer with `records` messages of one partition already buffered; every poll costs SLICE_COST_S on the
    shared clock."""

    def __init__(self, records: int, clock: list[float]) -> None:
        self._values = [b'{"ts": %d, "values": {"a": 1.0}}' % i for i in range(records)]
        self._next, self._clock = 0, clock
        self.polls: list[tuple[int, int]] = []  # (timeout_ms, max_records) of every call

    def subscribe(self, *, topics: Sequence[str], pattern: str | None, on_rebalance: RebalanceCallback) -> None:
        pass

    def poll(self, *, timeout_ms: int, max_records: int) -> list[Fetched]:
        self.polls.append((timeout_ms, max_records))
        self._clock[0] += SLICE_COST_S
        taken = range(self._next, min(self._next + max_records, len(self._values)))
        self._next = taken.stop
        if not taken:
            return []
        return [Fetched("t", 0, list(taken), [(b"s1", self._values[i], ()) for i in taken])]

    def assignment(self) -> frozenset[Partition]:
        return frozenset({("t", 0)})

    def commit(self, offsets: Mapping[Partition, int], *, on_done: CommitCallback) -> None:
        pass

    def commit_sync(self, offsets: Mapping[Partition, int]) -> None:
        pass

    def highwater(self, partition: Partition) -> int | None:
        return len(self._values)

    def silence_s(self) -> float | None:
        return None

    def close(self) -> None:
        pass


def _source(records: int, *, max_poll_records: int = 10_000) -> tuple[KafkaSource, BufferedConsumer]:
    clock = [0.0]
    consumer = BufferedConsumer(records, clock)
    cfg = KafkaSourceConfig(topics=("t",), max_poll_records=max_poll_records)
    clocked: Callable[[], float] = lambda: clock[0]  # noqa: E731
    return KafkaSource(lambda: consumer, cfg, clock=clocked), consumer


def _rows(source: KafkaSource) -> list[int]:
    """Rows of each poll until nothing is left."""
    sizes = []
    while (polled := source.poll(timeout_ms=50)).chunks:
        sizes.append(sum(len(item) if isinstance(item, SampleRows) else 1 for item in polled.items))
    return sizes


def test_a_micro_batch_is_closed_once_its_time_budget_is_spent() -> None:
    source, consumer = _source(10 * POLL_SLICE_RECORDS)
    polled = source.poll(timeout_ms=50)
    # slices end at 20, 40 and 60 ms: the third one ends past the 50 ms budget, and the batch with it
    assert [chunk.end_row - chunk.first_row for chunk in polled.chunks] == [3 * POLL_SLICE_RECORDS]
    assert polled.chunks[0].last_offset == 3 * POLL_SLICE_RECORDS - 1
    assert len(consumer.polls) == 3


def test_only_the_first_slice_waits_for_records() -> None:
    source, consumer = _source(10 * POLL_SLICE_RECORDS)
    source.poll(timeout_ms=50)
    assert [timeout for timeout, _ in consumer.polls] == [50, 0, 0]


def test_records_left_over_when_the_budget_is_spent_open_the_next_batch_in_order() -> None:
    source, _ = _source(7 * POLL_SLICE_RECORDS + 10)
    first, second = source.poll(timeout_ms=50), source.poll(timeout_ms=50)
    assert second.chunks[0].row_offsets is not None
    assert int(second.chunks[0].row_offsets[0]) == first.chunks[0].last_offset + 1
    assert _rows(source) == [POLL_SLICE_RECORDS + 10]  # the rest, ended by what was buffered


def test_a_micro_batch_ends_with_what_is_buffered() -> None:
    source, consumer = _source(POLL_SLICE_RECORDS + 5)
    polled = source.poll(timeout_ms=10_000)
    assert polled.chunks[0].end_row == POLL_SLICE_RECORDS + 5
    assert len(consumer.polls) == 2  # the second slice came back short: nothing more to wait for


def test_a_micro_batch_never_exceeds_max_poll_records_within_its_budget() -> None:
    source, consumer = _source(10 * POLL_SLICE_RECORDS, max_poll_records=2500)
    polled = source.poll(timeout_ms=10_000)
    assert [chunk.end_row for chunk in polled.chunks] == [2500]
    assert [wanted for _, wanted in consumer.polls] == [POLL_SLICE_RECORDS, POLL_SLICE_RECORDS, 500]


def test_a_consumer_that_names_its_own_slice_is_polled_in_slices_of_that_size() -> None:
    source, consumer = _source(10 * POLL_SLICE_RECORDS, max_poll_records=8000)
    consumer.poll_slice_records = 5000  # type: ignore[attr-defined]  # as librdkafka's consumer says
    source.poll(timeout_ms=10_000)
    assert [wanted for _, wanted in consumer.polls] == [5000, 3000]


def test_librdkafkas_consumer_takes_larger_slices_than_kafka_pythons() -> None:
    assert ConfluentGroupConsumer.poll_slice_records > POLL_SLICE_RECORDS
    assert not hasattr(KafkaPythonGroupConsumer, "poll_slice_records")  # the default slice


def test_a_micro_batch_of_large_records_closes_once_their_bytes_reach_the_limit() -> None:
    source, consumer = _source(100, max_poll_records=30)
    consumer._values = [b"x" * (MAX_BATCH_BYTES // 8)] * 100  # 1 MiB records (audio chunks are 32 KB-1 MB)
    first, second = source.poll(timeout_ms=10_000), source.poll(timeout_ms=10_000)
    assert first.chunks[0].last_offset == 29  # the records' size is not known yet: closed by count
    assert second.chunks[0].last_offset == 29 + 8  # then by bytes: 8 of 1 MiB


def test_small_records_never_reach_the_byte_limit() -> None:
    source, _ = _source(3 * POLL_SLICE_RECORDS)
    assert _rows(source) == [3 * POLL_SLICE_RECORDS]
