"""The engine, run offline: micro-batched scoring across streams, dead letters, gaps, and offline parity."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig, CalibrationConfig, RouteConfig
from ae_monitor.engine import Engine
from ae_monitor.jobs.data import load_signals, score_signal
from ae_monitor.jobs.demo import CHANNELS, START_S
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.records import Alert, DeadLetter, SampleRows, SensorRecord
from ae_monitor.scoring import scorer_for
from ae_monitor.serve.offline import Runner
from ae_monitor.serve.outputs import Outputs
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.memory import MemorySource
from ae_monitor.sources.replay import ReplaySource


class Harness:
    def __init__(self, bundle: Bundle, alerting: AlertingConfig | None = None) -> None:
        self.alerts: MemorySink[Alert] = MemorySink()
        self.dead: MemorySink[DeadLetter] = MemorySink()
        self.registry = CollectorRegistry()
        self.runner = runner(
            bundle,
            alerting=alerting or AlertingConfig(k=5, n=10, exit_ratio=0.8, cooldown_s=60),
            alerts=self.alerts,
            dead_letters=self.dead,
            metrics=Metrics(self.registry),
            max_gap_s=30,
        )

    @property
    def engine(self) -> Engine:
        return self.runner.engine

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def runner(bundles: Bundle | dict[str, Bundle], *, alerts: MemorySink[Alert], dead_letters: MemorySink[DeadLetter],
           metrics: Metrics, **engine: Any) -> Runner:  # fmt: skip
    """The engine with its results delivered to memory sinks, as replay delivers them to files."""
    return Runner(
        Engine(bundles, metrics=metrics, **engine), Outputs(alerts=alerts, dead_letters=dead_letters), metrics
    )


@pytest.fixture
def bundle(sensor_bundle: Path) -> Bundle:
    return load_bundle(sensor_bundle)


def _record(stream: str, start: int, n: int, channels: tuple[str, ...] = CHANNELS) -> SensorRecord:
    rng = np.random.default_rng(start)
    ts = START_S + np.arange(start, start + n, dtype=np.float64)
    values = np.column_stack([0.5 + rng.normal(0, 0.03, n), 11 + rng.normal(0, 0.1, n),
                              2.7 + rng.normal(0, 0.05, n), 49 + rng.normal(0, 0.1, n)])  # fmt: skip
    return SensorRecord(stream, ts, values, channels)


def test_replayed_faults_fire_alerts_on_the_faulted_streams_only(
    bundle: Bundle, sensor_data: tuple[Path, Path]
) -> None:
    harness = Harness(bundle)
    source = ReplaySource([sensor_data[1]], bundle.features, chunk_samples=10)
    harness.runner.run(source, max_records=3)
    firing = {a.stream for a in harness.alerts.items if a.status == "firing"}
    assert firing == {"pump-2", "pump-3"}
    assert harness.dead.items == []


def test_alert_names_the_faulted_channel_first(bundle: Bundle, sensor_data: tuple[Path, Path]) -> None:
    harness = Harness(bundle)
    harness.runner.run(ReplaySource([sensor_data[1]], bundle.features, chunk_samples=25))
    first = {a.stream: a for a in reversed(harness.alerts.items) if a.status == "firing"}
    assert first["pump-2"].top_contributors[0][0] == "vibration_rms"
    assert first["pump-3"].top_contributors[0][0] == "pressure_bar"


def test_streamed_windows_equal_the_offline_scores_of_the_same_file(
    bundle: Bundle, sensor_data: tuple[Path, Path]
) -> None:
    harness = Harness(bundle)
    streamed = []
    source = ReplaySource([sensor_data[1] / "pump-2.csv"], bundle.features, chunk_samples=7)
    while not source.exhausted:
        streamed += harness.runner.process(source.poll(max_records=4))
    streamed += harness.runner.flush()
    offline = score_signal(
        bundle, scorer_for(bundle), load_signals([sensor_data[1] / "pump-2.csv"], bundle.features)[0]
    )
    assert len(streamed) == len(offline.windows)
    np.testing.assert_allclose([w.score for w in streamed], [w.score for w in offline.windows], rtol=1e-5)
    assert streamed[0].start_s == START_S
    assert streamed[0].end_s == START_S + bundle.features.sensor.window_samples


def test_one_forward_pass_per_micro_batch_across_streams(bundle: Bundle) -> None:
    harness = Harness(bundle)
    harness.runner.process([_record(f"pump-{i}", 0, 40) for i in range(5)])
    assert harness.metric("ae_monitor_scoring_batch_seconds_count") == 1
    assert harness.metric("ae_monitor_windows_scored_total", bundle="pump") == 5 * (40 - 30 + 1)
    assert harness.metric("ae_monitor_streams_active") == 5


def test_streams_are_warming_until_their_first_full_window(bundle: Bundle) -> None:
    harness = Harness(bundle)
    harness.runner.process([_record("a", 0, 10), _record("b", 0, 40)])
    assert harness.metric("ae_monitor_streams_warming") == 1
    harness.runner.process([_record("a", 10, 25)])
    assert harness.metric("ae_monitor_streams_warming") == 0


def test_channel_mismatch_is_a_dead_letter_and_the_batch_goes_on(bundle: Bundle) -> None:
    harness = Harness(bundle)
    wrong = _record("a", 0, 40, channels=("vibration_rms", "motor_current_a", "pressure_bar", "humidity"))
    windows = harness.runner.process([wrong, _record("b", 0, 40)])
    assert [d.reason for d in harness.dead.items] == ["channel_mismatch"]
    assert "humidity" in harness.dead.items[0].message
    assert {w.stream for w in windows} == {"b"}
    assert harness.metric("ae_monitor_dead_letters_total", reason="channel_mismatch") == 1


def test_channels_in_another_order_are_reordered(bundle: Bundle) -> None:
    a, b = Harness(bundle), Harness(bundle)
    record = _record("s", 0, 40)
    shuffled = SensorRecord("s", record.ts_s, record.values[:, ::-1], tuple(reversed(CHANNELS)))
    assert [w.score for w in a.runner.process([record])] == [w.score for w in b.runner.process([shuffled])]


def test_samples_older_than_the_stream_are_dropped_and_counted(bundle: Bundle) -> None:
    harness = Harness(bundle)
    harness.runner.process([_record("s", 100, 40), _record("s", 130, 20)])
    assert harness.metric("ae_monitor_late_samples_total") == 10
    assert harness.metric("ae_monitor_samples_total") == 50
    assert harness.dead.items == []


def test_a_long_gap_restarts_the_streams_windows(bundle: Bundle) -> None:
    harness = Harness(bundle)
    harness.runner.process([_record("s", 0, 40)])
    windows = harness.runner.process([_record("s", 1000, 20)])
    assert windows == []  # 20 samples after the gap do not fill a 30-sample window
    assert harness.metric("ae_monitor_streams_warming") == 1


def test_memory_source_runs_to_exhaustion(bundle: Bundle) -> None:
    harness = Harness(bundle)
    scored = harness.runner.run(MemorySource([_record("s", 0, 40), _record("s", 40, 40)]), max_records=1)
    assert scored == 80 - 30 + 1


def _single_samples(record: SensorRecord) -> list[SensorRecord]:
    return [
        SensorRecord(record.stream, record.ts_s[i : i + 1], record.values[i : i + 1], record.channels)
        for i in range(len(record.ts_s))
    ]


def test_single_sample_records_give_the_windows_of_one_block(bundle: Bundle) -> None:
    block, singles = Harness(bundle), Harness(bundle)
    record = _record("s", 0, 45)
    expected = [w.score for w in block.runner.process([record])]
    result = singles.runner.process_batch(_single_samples(record))
    assert [w.score for w in result.windows] == expected
    assert [p.last_sample for p in result.positions if p is not None] == list(range(45))


def test_a_record_is_done_once_every_window_containing_it_was_scored(bundle: Bundle) -> None:
    harness = Harness(bundle)
    positions = harness.runner.process_batch(_single_samples(_record("s", 0, 45))).positions
    done = [harness.engine.is_done(p) for p in positions if p is not None]
    # windows of 30 samples, hop 1: 16 windows start at samples 0..15, so samples 0..14 are in no future window
    assert done == [True] * 15 + [False] * 30


def test_a_bad_record_inside_a_block_is_the_only_dead_letter(bundle: Bundle) -> None:
    harness = Harness(bundle)
    records = _single_samples(_record("s", 0, 40))
    bad = records[10]
    records[10] = SensorRecord(bad.stream, bad.ts_s, bad.values[:, :3], bad.channels[:3])
    harness.runner.process_batch(records)
    assert [d.reason for d in harness.dead.items] == ["channel_mismatch"]
    assert harness.metric("ae_monitor_samples_total") == 39


# -- the columnar lane: SampleRows blocks give exactly what the same rows give record by record -------------------


def _rows(records: list[SensorRecord]) -> SampleRows:
    return SampleRows(
        [r.stream for r in records],
        np.concatenate([r.ts_s for r in records]),
        np.concatenate([r.values for r in records]),
        records[0].channels,
    )


def _interleaved_rows(seed: int) -> list[SensorRecord]:
    """Single samples of six streams in a random interleaving, with a fault, a late sample, a missing value and a
    restart-sized gap in some of them."""
    rng = np.random.default_rng(seed)
    streams = {name: _single_samples(_record(name, 100 * k, 120)) for k, name in enumerate("abcdef")}
    fault = streams["b"]
    for i in range(60, 90):
        fault[i] = SensorRecord("b", fault[i].ts_s, fault[i].values + np.array([0, 0, 20, 0]), CHANNELS)
    late = streams["c"]
    late[50] = SensorRecord("c", late[48].ts_s, late[50].values, CHANNELS)
    missing = streams["d"]
    missing[40] = SensorRecord("d", missing[40].ts_s, np.array([[np.nan, 11, 2.7, 49]]), CHANNELS)
    gap = streams["e"]
    streams["e"] = [SensorRecord("e", r.ts_s + (500 if i >= 70 else 0), r.values, CHANNELS) for i, r in enumerate(gap)]
    order = rng.permutation(np.repeat(np.arange(6), 120))
    cursor = dict.fromkeys("abcdef", 0)
    out = []
    for k in order.tolist():
        name = "abcdef"[k]
        out.append(streams[name][cursor[name]])
        cursor[name] += 1
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_sample_rows_score_alert_and_progress_like_the_same_records_one_by_one(bundle: Bundle, seed: int) -> None:
    records = _interleaved_rows(seed)
    by_record, columnar = Harness(bundle), Harness(bundle)
    cuts = [0, 37, 200, 201, 450, len(records)]
    expected, got = [], []
    for lo, hi in itertools.pairwise(cuts):
        expected.append(by_record.runner.process_batch(records[lo:hi]))
        got.append(columnar.runner.process_batch([_rows(records[lo:hi])]))
    for want, have in zip(expected, got, strict=True):
        # streams may come out in another order; each stream's windows keep theirs
        have_windows = sorted(have.windows, key=lambda w: w.stream)
        want_windows = sorted(want.windows, key=lambda w: w.stream)
        assert [(w.stream, w.start_s, w.end_s) for w in have_windows] == [
            (w.stream, w.start_s, w.end_s) for w in want_windows
        ]
        assert [w.score for w in have_windows] == pytest.approx([w.score for w in want_windows], rel=1e-5)
        assert have.positions == want.positions
    assert sorted((a.id, a.status) for a in columnar.alerts.items) == sorted(
        (a.id, a.status) for a in by_record.alerts.items
    )
    assert "b" in {a.stream for a in columnar.alerts.items}
    assert [(d.source, d.reason) for d in columnar.dead.items] == [(d.source, d.reason) for d in by_record.dead.items]
    assert columnar.metric("ae_monitor_late_samples_total") == 1
    for name in ("ae_monitor_samples_total", "ae_monitor_records_total"):
        assert columnar.metric(name) == by_record.metric(name)


def test_sample_rows_mixed_with_records_keep_each_streams_order(bundle: Bundle) -> None:
    singles = _single_samples(_record("s", 0, 60))
    mixed, by_record = Harness(bundle), Harness(bundle)
    batch = [_rows(singles[:20]), _record("s", 20, 10), _rows(singles[30:60])]
    # the middle record holds samples 20..29 of the same stream (same values as _record makes for them)
    want = by_record.runner.process_batch([*singles[:20], _record("s", 20, 10), *singles[30:60]])
    have = mixed.runner.process_batch(batch)
    assert [w.start_s for w in have.windows] == [w.start_s for w in want.windows]
    assert have.positions == want.positions


def test_sample_rows_with_channels_in_another_order_are_reordered(bundle: Bundle) -> None:
    harness = Harness(bundle)
    rows = _rows(_single_samples(_record("s", 0, 40)))
    swapped = SampleRows(rows.streams, rows.ts_s, rows.values[:, ::-1], CHANNELS[::-1])
    assert len(harness.runner.process_batch([swapped]).windows) == 40 - 30 + 1
    assert harness.dead.items == []


def test_progress_latest_is_the_newest_position_of_each_stream(bundle: Bundle) -> None:
    harness = Harness(bundle)
    records = _single_samples(_record("a", 0, 5)) + _single_samples(_record("b", 0, 3))
    progress = harness.runner.process_batch([_rows(records)]).progress
    assert sorted((p.stream, p.last_sample) for p in progress.latest(0, 8)) == [("a", 4), ("b", 2)]
    assert [(p.stream, p.last_sample) for p in progress.latest(0, 2)] == [("a", 1)]


def test_per_stream_gauges_follow_the_streams_state_and_go_with_it(bundle: Bundle) -> None:
    harness = Harness(bundle)
    windows = harness.runner.process_batch([_rows(_single_samples(_record("s", 0, 40)))]).windows
    labels = {"stream": "s", "bundle": bundle.name}
    assert harness.metric("ae_monitor_window_score", **labels) == windows[-1].score
    assert harness.metric("ae_monitor_window_threshold", **labels) == bundle.threshold
    assert harness.metric("ae_monitor_stream_last_sample_timestamp_seconds", stream="s") == START_S + 39
    harness.engine.drop_streams(["s"])
    assert harness.registry.get_sample_value("ae_monitor_window_score", labels) is None


# -- routing on a record field (say the machine type) ----------------------------------------------------------------


def _tagged(record: SensorRecord, **tags: str) -> SensorRecord:
    return SensorRecord(record.stream, record.ts_s, record.values, record.channels, tags)


def _routed(bundle: Bundle) -> Harness:
    harness = Harness(bundle)
    routes = [
        (RouteConfig(match="pump*", field="machine_type", bundle_path="p"), "pumps"),
        (RouteConfig(match="fan", field="machine_type", bundle_path="f"), "fans"),
    ]
    harness.registry = CollectorRegistry()
    harness.runner = runner({"pumps": bundle, "fans": bundle}, alerting=AlertingConfig(), alerts=harness.alerts,
                            dead_letters=harness.dead, metrics=Metrics(harness.registry),
                            routes=routes)  # fmt: skip
    return harness


def test_streams_are_routed_on_a_record_field_such_as_the_machine_type(bundle: Bundle) -> None:
    harness = _routed(bundle)
    pump = _tagged(_record("site-1/a", 0, 40), machine_type="pump-v2")
    fan = _tagged(_record("site-1/b", 0, 40), machine_type="fan")
    harness.runner.process_batch([pump, fan])
    assert {name: state.slot for name, state in harness.engine.streams.items()} == {
        "site-1/a": "pumps",
        "site-1/b": "fans",
    }


def test_sample_rows_are_routed_on_their_tag_columns(bundle: Bundle) -> None:
    harness = _routed(bundle)
    rows = _rows(_single_samples(_record("a", 0, 3)) + _single_samples(_record("b", 0, 3)))
    tags = {"machine_type": ["pump"] * 3 + ["fan"] * 3}
    harness.runner.process_batch([SampleRows(rows.streams, rows.ts_s, rows.values, rows.channels, tags)])
    assert {name: state.slot for name, state in harness.engine.streams.items()} == {"a": "pumps", "b": "fans"}


def test_a_stream_without_the_routing_field_is_a_no_route_dead_letter(bundle: Bundle) -> None:
    harness = _routed(bundle)
    harness.runner.process_batch([_record("untagged", 0, 5), _tagged(_record("odd", 0, 5), machine_type="valve")])
    assert [d.reason for d in harness.dead.items] == ["no_route", "no_route"]
    assert harness.engine.streams == {}


def test_sample_rows_in_another_channel_order_score_like_the_bundles_order(bundle: Bundle) -> None:
    # Producers write JSON keys in any order; the columnar lane puts them in the bundle's order itself.
    rows = _rows(_single_samples(_record("s", 0, 40)))
    swapped = SampleRows(rows.streams, rows.ts_s, rows.values[:, ::-1].copy(), CHANNELS[::-1])
    want = Harness(bundle).runner.process_batch([rows]).windows
    assert Harness(bundle).runner.process_batch([swapped]).windows == want


def test_every_window_carries_its_surprise_under_the_bundles_calibration(bundle: Bundle) -> None:
    harness = Harness(bundle)
    windows = harness.runner.process([_record("s", 0, 40)])
    assert bundle.calibration is not None
    assert [w.surprise for w in windows] == pytest.approx(bundle.calibration.surprises([w.score for w in windows]))
    labels = {"stream": "s", "bundle": bundle.name}
    assert harness.metric("ae_monitor_window_surprise", **labels) == pytest.approx(windows[-1].surprise)
    assert harness.metric("ae_monitor_surprise_count", bundle=bundle.name) == len(windows)


def test_a_stream_outside_the_training_range_is_counted_and_logged_once_per_excursion(
    bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(bundle)
    harness.runner.process([_record("steady", 0, 40)])
    moved = _record("moved", 0, 40)
    moved.values[:, 1] += 1000.0  # the second channel far beyond anything in training
    with caplog.at_level("INFO", logger="ae_monitor.engine.windows"):
        harness.runner.process([moved])
        moved_on = _record("moved", 40, 20)
        moved_on.values[:, 1] += 1000.0
        harness.runner.process([moved_on, _record("steady", 40, 20)])
        harness.runner.process([_record("moved", 60, 40)])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "outside" in r.getMessage()]
    assert len(warnings) == 1
    assert f"stream moved: {CHANNELS[1]} at z = +" in warnings[0]
    assert "outside the range the model was trained on" in warnings[0]
    assert any("stream moved: back inside the training range" in r.getMessage() for r in caplog.records)
    counted = harness.metric("ae_monitor_out_of_range_windows_total", bundle="pump", channel=CHANNELS[1])
    assert counted == (40 - 30 + 1) + 20
    assert harness.metric("ae_monitor_out_of_range_windows_total", bundle="pump", channel=CHANNELS[0]) == 0


def test_a_stream_settled_under_a_tracked_threshold_does_not_alert_again_after_a_restart(bundle: Bundle) -> None:
    tracking = CalibrationConfig(online="track", track_windows=20, track_settle_windows=40)

    def moved(start: int, n: int) -> SensorRecord:
        record = _record("moved", start, n)
        record.values[:, 2] += 0.5  # a new, steady operating point: far above normal scores, for good
        return record

    def engine_run(engine: Engine, start: int, stop: int) -> tuple[list[Alert], dict[str, Any]]:
        alerts, states = [], {}
        for lo in range(start, stop, 20):
            result = engine.process([moved(lo, 20)])
            alerts += result.alerts
            states |= result.alert_states
        return alerts, states

    first = Engine(bundle, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()), online=tracking)
    alerts, states = engine_run(first, 0, 400)
    assert [a.status for a in alerts] == ["firing", "resolved"]  # fired, then the level became the stream's normal
    assert states["moved"]["tracked_median"] > 0

    restarted = Engine(bundle, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()), online=tracking)
    restarted.restore_alert_states(states)
    assert engine_run(restarted, 400, 600)[0] == []
    forgetful = Engine(bundle, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()), online=tracking)
    assert [a.status for a in engine_run(forgetful, 400, 600)[0]][:1] == ["firing"]  # without the saved level
