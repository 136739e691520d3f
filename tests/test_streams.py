"""Per-stream time and commit bookkeeping: stream clocks per feature kind, and when a stream's samples are done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig
from ae_monitor.engine import Engine, Progress, RecordPosition
from ae_monitor.features.clock import AudioClock, SensorClock
from ae_monitor.jobs.demo import CHANNELS, START_S
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle
from ae_monitor.records import SensorRecord
from ae_monitor.serve.commits import CommitBook
from ae_monitor.sources.kafka import Chunk


def test_a_sensor_clock_reads_window_times_from_the_samples_own_stamps() -> None:
    clock = SensorClock(sample_period_s=1.0, keep_samples=4)
    clock.advance(np.array([10.0, 11.0, 13.0]))
    assert (clock.time_of(2), clock.end_of(3), clock.time_of(4)) == (13.0, 14.0, 15.0)  # past the end: extrapolated


def test_a_sensor_clock_keeps_only_the_stamps_a_future_window_can_start_at() -> None:
    clock = SensorClock(sample_period_s=1.0, keep_samples=2)
    clock.advance(np.arange(10.0))
    clock.trim()
    assert (len(clock.ts), clock.ts_base, clock.time_of(9)) == (2, 8, 9.0)


def test_sensor_samples_not_newer_than_the_newest_are_late_one_by_one() -> None:
    clock = SensorClock(sample_period_s=1.0, keep_samples=4)
    clock.advance(np.array([5.0]))
    keep = clock.fresh(np.array([4.0, 5.0, 6.0]), 3, tolerance_s=0.0)
    assert keep is not None
    assert keep.tolist() == [False, False, True]


def test_an_audio_clock_counts_samples_from_the_first_chunks_time() -> None:
    clock = AudioClock(sample_rate_hz=16_000)
    clock.advance(100.0, 16_000)
    assert (clock.time_of(8_000), clock.end_of(16_000), clock.last_ts_s) == (100.5, 101.0, 101.0)


def test_an_audio_chunk_that_starts_before_the_stream_is_late_as_a_whole_beyond_the_tolerance() -> None:
    clock = AudioClock(sample_rate_hz=16_000)
    clock.advance(100.0, 16_000)
    late = clock.fresh(100.5, 16_000, tolerance_s=0.1)
    assert late is not None
    assert not late.any()
    assert clock.fresh(100.95, 16_000, tolerance_s=0.1) is None


@pytest.fixture
def engine(sensor_bundle: Path) -> Engine:
    return Engine(load_bundle(sensor_bundle), alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()),
                  max_gap_s=5.0, clock=lambda: 1000.0)  # fmt: skip


def _record(stream: str, start: int, n: int) -> SensorRecord:
    rng = np.random.default_rng(start)
    values = np.column_stack([0.5 + rng.normal(0, 0.03, n), 11 + rng.normal(0, 0.1, n),
                              2.7 + rng.normal(0, 0.05, n), 49 + rng.normal(0, 0.1, n)])  # fmt: skip
    return SensorRecord(stream, START_S + np.arange(start, start + n, dtype=np.float64), values, CHANNELS)


def test_a_stream_silent_longer_than_the_restart_gap_releases_its_open_window_for_commits(engine: Engine) -> None:
    engine.process([_record("s", 0, 10)])  # less than a window: nothing scored, every sample waits
    waiting = RecordPosition("s", 0, 9)
    assert not engine.is_done(waiting)
    assert engine.release_stalled(1000.0 + 4.0) == []  # not yet silent for max_gap_s
    assert engine.release_stalled(1000.0 + 6.0) == ["s"]
    assert engine.is_done(waiting)


def test_commits_take_the_done_prefix_of_a_poll_that_is_not_done_as_a_whole(engine: Engine) -> None:
    records = [_record("a", 0, 40), _record("b", 0, 5)]  # a: windows scored up to sample 10; b: none yet
    progress = engine.process(records).progress
    assert isinstance(progress, Progress)
    book = CommitBook()
    book.add([Chunk("t", 0, last_offset=101, first_row=0, end_row=2, row_offsets=np.array([100, 101]))], progress)
    assert book.committable(engine.is_done, every=False) == {}  # the poll as a whole still waits for b
    # Looked into: the first record not done is a's own (its last samples wait for a window), at offset 100.
    assert book.committable(engine.is_done, every=False, done_marks=engine.done_marks) == {("t", 0): 100}
    engine.process([_record("a", 40, 30)])  # a's window now starts after all of its first record's samples
    assert book.committable(engine.is_done, every=False, done_marks=engine.done_marks) == {("t", 0): 101}


def test_a_stream_evicted_while_its_episode_fires_continues_it_under_its_id_when_it_comes_back(
    sensor_bundle: Path,
) -> None:
    from ae_monitor.config import StreamsConfig

    one = StreamsConfig(max_streams=1)
    engine = Engine(load_bundle(sensor_bundle), alerting=AlertingConfig(k=2, n=3, cooldown_s=0),
                    metrics=Metrics(CollectorRegistry()), streams=one, max_gap_s=1e9)  # fmt: skip
    faulty = _record("pump", 0, 60)
    faulty.values[:, 2] += 5.0  # pressure far off: every window anomalous
    fired = [a for a in engine.process([faulty]).alerts if a.status == "firing"]
    assert len(fired) == 1
    engine.process([_record("other", 0, 5)])  # max_streams = 1: `pump` is evicted for capacity
    assert "pump" not in engine.streams
    again = _record("pump", 60, 40)
    again.values[:, 2] += 5.0
    result = engine.process([again])
    assert [a for a in result.alerts if a.status == "firing"] == []  # no new episode: the old one goes on
    assert engine.streams["pump"].alert.episode is not None
    assert engine.streams["pump"].alert.episode.alert_id == fired[0].id


def test_records_of_a_stream_evicted_for_capacity_are_done_although_it_comes_back(sensor_bundle: Path) -> None:
    from ae_monitor.config import StreamsConfig

    engine = Engine(load_bundle(sensor_bundle), alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()),
                    streams=StreamsConfig(max_streams=1), max_gap_s=1e9)  # fmt: skip
    position = engine.process([_record("pump", 0, 50)]).positions[0]
    assert position is not None
    assert not engine.is_done(position)  # its last samples wait for a window
    engine.process([_record("other", 0, 5)])  # `pump` evicted: its open window can never complete
    engine.process([_record("pump", 50, 5)])  # and comes back, its sample count starting at 0 again
    assert engine.is_done(position)
