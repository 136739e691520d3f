"""Kafka source: a consumer group over topics or a pattern, decoding messages into records, manual commits only.

Offsets are committed by the caller through `commit`, never automatically: the daemon commits a record only after
every window containing it was scored and its alerts were delivered. Rebalance callbacks may run on the client's
network thread (kafka-python), so they only queue the change; the main loop applies it through
`take_rebalance_events` (dropping the state of revoked streams, forgetting their offsets). The client library is
behind `kafka_client` (kafka-python or librdkafka, `kafka.client`); nothing here depends on which.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ae_monitor.config import KafkaConnectionConfig, KafkaSourceConfig
from ae_monitor.errors import AeMonitorError, KafkaClientError, RecordError
from ae_monitor.kafka_client import Fetched, GroupConsumer, Partition, build_client
from ae_monitor.records import Record, SampleRows
from ae_monitor.sources.batch import decode_batch

log = logging.getLogger(__name__)

__all__ = ["Chunk", "KafkaSource", "Partition", "Polled", "RebalanceEvent", "Rejected", "consumer_factory"]


@dataclass(frozen=True)
class Rejected:
    """A consumed message that did not decode: where it came from, why, and its original value."""

    topic: str
    partition: int
    offset: int
    error: RecordError
    raw: bytes | None


@dataclass(frozen=True)
class Chunk:
    """One partition's messages in a poll: up to `last_offset`, decoded into rows [first_row, end_row) of the
    poll's items (a record is one row, a SampleRows block one row per sample)."""

    topic: str
    partition: int
    last_offset: int
    first_row: int
    end_row: int
    row_offsets: npt.NDArray[np.int64] | None = None  # the offset of each row (rows are the good messages, in order)


@dataclass(frozen=True)
class Polled:
    """One poll, decoded: the records in consumption order, each partition's share, and what did not decode."""

    items: list[Record | SampleRows]
    chunks: list[Chunk]
    rejected: list[Rejected]

    @staticmethod
    def empty() -> Polled:
        return Polled([], [], [])


@dataclass(frozen=True)
class RebalanceEvent:
    kind: str  # "assigned" | "revoked" | "lost"
    partitions: frozenset[Partition]


ConsumerFactory = Callable[[], GroupConsumer]

# A poll takes what is buffered in slices of this many records and closes the micro-batch once its time budget is
# spent: a slice is unpacked and decoded in a few ms, which bounds the overshoot. A consumer may say its own slice
# (`poll_slice_records`): librdkafka hands over records unpacked in C, so its slices can be larger.
POLL_SLICE_RECORDS = 1000
# A micro-batch also closes once its records' payloads reach about this many bytes (judged by the size of the latest
# record seen): 250 one-second audio chunks, against 10,000 (320 MB) by count alone, which librdkafka hands over at
# once from its prefetched queue. Sensor records (~130 B) never reach it. Measured (docs/serve.md, same-run A/Bs):
# audio through serve with librdkafka 1,339x -> 1,616x real time per core (median of 3), kafka-python unchanged.
MAX_BATCH_BYTES = 8 * 1024 * 1024


def consumer_factory(conn: KafkaConnectionConfig, cfg: KafkaSourceConfig) -> ConsumerFactory:
    """A factory for the real consumer of the library `conn.client` names, connected with backoff
    (kafka_client.connect); the daemon's tests and users inject their own for other setups."""
    client = build_client(conn)
    return lambda: client.consumer(cfg)


class KafkaSource:
    """Consumes and decodes messages; commits only what the caller says is complete.

    kafka-python 3.0.12 was seen to stall in a group rebalance (the leader's second join never completes; commits
    then fail with RebalanceInProgress). When commits keep failing that way for `stall_after_s`, `recover` builds
    a new consumer: the old one's partitions are revoked (their streams dropped) and records since the last
    commit are read again, which at-least-once delivery allows.
    """

    def __init__(self, connect: ConsumerFactory, cfg: KafkaSourceConfig, *, stall_after_s: float = 15.0,
                 tags: Sequence[str] = (), reconnect_max_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._connect, self._cfg, self._stall_after_s, self._clock = connect, cfg, stall_after_s, clock
        self._tags = tuple(tags)  # routing fields to keep (see decode_message)
        self._events: queue.SimpleQueue[RebalanceEvent] = queue.SimpleQueue()
        self._max_records = cfg.max_poll_records
        self._record_bytes = 0  # payload size of the latest record polled (0: none yet)
        self._next: dict[Partition, int] = {}
        self._committed_at: dict[Partition, int] = {}  # next offset after the last acknowledged commit
        self._failing_since: float | None = None
        self._reconnect_max_s, self._reconnect_delay_s, self._reconnect_at = reconnect_max_s, 0.0, 0.0
        self.last_commit_s: float | None = None  # wall time of the last acknowledged commit
        # Startup needs the brokers (a wrong address or password stops it there, named); later outages are ridden
        # out: a consumer that cannot be rebuilt leaves the source disconnected, and `poll` tries again.
        self._consumer: GroupConsumer | None = self._subscribe(connect())

    def _subscribe(self, consumer: GroupConsumer) -> GroupConsumer:
        def queued(kind: str, partitions: frozenset[Partition]) -> None:
            self._events.put(RebalanceEvent(kind, partitions))

        consumer.subscribe(topics=self._cfg.topics, pattern=self._cfg.topic_pattern, on_rebalance=queued)
        return consumer

    @property
    def connected(self) -> bool:
        """A consumer is there and not stalled: what /readyz reports as `source`."""
        return self._consumer is not None and not self.stalled

    @property
    def stalled(self) -> bool:
        """Commits kept failing, or the group has not answered a heartbeat, for `stall_after_s`."""
        if self._consumer is None:
            return False  # nothing to recover: `poll` reconnects
        since = self._failing_since
        if since is not None and time.monotonic() - since > self._stall_after_s:
            return True
        silent = self._consumer.silence_s()
        return silent is not None and silent > self._stall_after_s

    def recover(self) -> None:
        """Replace a stalled consumer with a new member of the group (its partitions are revoked first)."""
        log.warning("the consumer group has not answered for %.0f s; reconnecting", self._stall_after_s)
        self._drop_consumer()
        self._reconnect()

    def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        owned = consumer.assignment() if consumer is not None else frozenset()
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:  # a consumer that lost its brokers may fail to close; it is gone either way
                log.warning("closing the stalled consumer failed: %r", exc)
        if owned:
            self._events.put(RebalanceEvent("lost", owned))
        self._failing_since = None
        self._next.clear()
        self._committed_at.clear()

    def _reconnect(self) -> None:
        try:
            self._consumer = self._subscribe(self._connect())
        except AeMonitorError as exc:
            self._reconnect_delay_s = min(max(1.0, 2 * self._reconnect_delay_s), self._reconnect_max_s)
            self._reconnect_at = time.monotonic() + self._reconnect_delay_s
            log.error("Kafka is unreachable, serving on without it: %s; next try in %.0f s", exc,
                      self._reconnect_delay_s)  # fmt: skip
            return
        self._reconnect_delay_s = 0.0
        log.info("reconnected to Kafka")

    def poll(self, *, timeout_ms: int) -> Polled:
        """Up to `max_poll_records` messages, decoded: a micro-batch. Waits at most `timeout_ms` for the first ones,
        then takes what is buffered until `max_poll_records`, the end of what is buffered, or `timeout_ms` after the
        call, whichever comes first (see `_gather`)."""
        if self._consumer is None:
            if time.monotonic() >= self._reconnect_at:
                self._reconnect()
            if self._consumer is None:
                time.sleep(timeout_ms / 1000)
                return Polled.empty()
        return self._decode(self._gather(self._consumer, timeout_ms))

    def _gather(self, consumer: GroupConsumer, timeout_ms: int) -> list[Fetched]:
        """A micro-batch closed by count or by time. Every record of a batch waits for the whole batch (its alerts
        leave after the last record is scored), and the client's unpacking is most of a batch's cost: after a burst
        or a pause, one poll of `max_poll_records` kept a record's alert waiting for ~10,000 others. Taking slices
        until the time budget is spent bounds that wait, and costs nothing when batches are small anyway."""
        deadline = self._clock() + timeout_ms / 1000
        parts: dict[Partition, list[Fetched]] = {}
        taken, wait_ms = 0, timeout_ms
        slice_records = getattr(consumer, "poll_slice_records", POLL_SLICE_RECORDS)
        most = self._max_records
        if self._record_bytes:
            most = min(most, max(1, MAX_BATCH_BYTES // self._record_bytes))
        while taken < most:
            want = min(slice_records, most - taken)
            got = consumer.poll(timeout_ms=wait_ms, max_records=want)
            for batch in got:
                parts.setdefault((batch.topic, batch.partition), []).append(batch)
                self._record_bytes = max(1, len(batch.messages[-1][1] or b""))
            count = sum(len(batch.offsets) for batch in got)
            taken += count
            if count < want or self._clock() >= deadline:
                break  # nothing more buffered, or the budget is spent
            wait_ms = 0
        return [_joined(batches) for batches in parts.values()]

    def _decode(self, fetched: list[Fetched]) -> Polled:
        items: list[Record | SampleRows] = []
        chunks, rejected, rows = [], [], 0
        for batch in sorted(fetched, key=lambda f: (f.topic, f.partition)):
            partition, offsets = (batch.topic, batch.partition), batch.offsets
            self._committed_at.setdefault(partition, offsets[0])  # where a restart would start now
            self._next[partition] = offsets[-1] + 1
            decoded, errors = decode_batch(batch.messages, tags=self._tags)
            for i, error in errors:
                rejected.append(Rejected(batch.topic, batch.partition, offsets[i], error, batch.messages[i][1]))
            first = rows
            rows += sum(len(item) if isinstance(item, SampleRows) else 1 for item in decoded)
            items += decoded
            chunks.append(Chunk(batch.topic, batch.partition, offsets[-1], first, rows,
                                _row_offsets(offsets, errors, rows - first)))  # fmt: skip
        return Polled(items, chunks, rejected)

    def take_rebalance_events(self) -> list[RebalanceEvent]:
        events = []
        while not self._events.empty():
            events.append(self._events.get_nowait())
        return events

    def assignment(self) -> frozenset[Partition]:
        return self._consumer.assignment() if self._consumer is not None else frozenset()

    def commit(self, offsets: dict[Partition, int], *, wait: bool = False) -> None:
        """Commit `offsets` (the next offset to read, per partition); partitions no longer owned are skipped.

        The main loop commits without waiting: a blocking commit issued while the group rebalances was seen to
        stall kafka-python 3.0.12's rebalance. A failed async commit is simply superseded by the next one (the
        offsets only grow). Shutdown waits (`wait=True`), when no rebalance can be in progress."""
        owned = self.assignment()
        mine = {partition: offset for partition, offset in offsets.items() if partition in owned}
        if not mine or self._consumer is None:
            return
        if wait:
            self._commit_now(mine)
            self._committed(mine)
        else:
            self._consumer.commit(mine, on_done=self._on_commit)

    def _on_commit(self, offsets: Mapping[Partition, int], error: Exception | None) -> None:
        """May run on the client's network thread: only records the outcome."""
        if error is not None:
            log.warning("offset commit failed (the next commit supersedes it): %s", error)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
        else:
            self._committed(offsets)

    def _committed(self, offsets: Mapping[Partition, int]) -> None:
        self._failing_since = None
        self.last_commit_s = time.time()
        self._committed_at.update(offsets)

    def _commit_now(self, offsets: Mapping[Partition, int], *, timeout_s: float = 5.0) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                consumer.commit_sync(offsets)
                return
            except KafkaClientError as exc:
                if not exc.retriable:
                    raise AeMonitorError(f"offset commit failed: {exc}") from exc
                if time.monotonic() > deadline:
                    raise AeMonitorError(f"offset commit failed until the deadline: {exc}") from exc
                # A rebalance in progress completes only through poll(); what it returns is not processed, so
                # those records stay uncommitted and are read again by the next owner.
                consumer.poll(timeout_ms=100, max_records=1)

    def lag(self) -> dict[Partition, int]:
        """Records behind the end of each owned partition, from the high watermarks of the latest fetches.

        No network call: blocking offset look-ups from the main thread were seen to hang kafka-python 3.0.12's
        rebalance, so partitions not fetched from yet are left out."""
        return self._behind(self._next)

    def uncommitted(self) -> dict[Partition, int]:
        """Records of each owned partition after its last acknowledged commit: what a restart would read again
        (counted from the first record polled when nothing was committed since the partition was assigned)."""
        return self._behind(self._committed_at)

    def _behind(self, offsets: dict[Partition, int]) -> dict[Partition, int]:
        if self._consumer is None:
            return {}
        lags = {}
        for partition in self._consumer.assignment():
            high = self._consumer.highwater(partition)
            offset = offsets.get(partition)
            if high is not None and offset is not None:
                lags[partition] = max(0, high - offset)
        return lags

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _joined(batches: list[Fetched]) -> Fetched:
    """One partition's slices of a micro-batch as one (they come in offset order)."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    offsets = [offset for batch in batches for offset in batch.offsets]
    return Fetched(first.topic, first.partition, offsets, [message for batch in batches for message in batch.messages])


def _row_offsets(
    offsets: Sequence[int], errors: Sequence[tuple[int, RecordError]], rows: int
) -> npt.NDArray[np.int64] | None:
    """The offset of each decoded row: every good message is one row, in order (None if that does not hold)."""
    found = np.asarray(offsets, dtype=np.int64)
    if errors:
        found = np.delete(found, [i for i, _ in errors])
    return found if len(found) == rows else None
