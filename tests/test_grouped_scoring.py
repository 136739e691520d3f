"""Grouped scoring (engine/grouped.py): bundles of one architecture run in one call over their stacked weights, and
every slot scores exactly what it scores alone; what cannot be grouped scores alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig, DriftConfig, ModelConfig
from ae_monitor.engine import Engine
from ae_monitor.engine.grouped import ModelGroups
from ae_monitor.engine.slots import Slot
from ae_monitor.jobs.demo import CHANNELS
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, export_onnx, load_bundle
from ae_monitor.model.networks import build_model
from ae_monitor.records import Alert, SensorRecord
from ae_monitor.sources.replay import ReplaySource

ALERTING = AlertingConfig(k=5, n=10, exit_ratio=0.8, cooldown_s=60)
SCALES = tuple(0.5 * (i + 1) for i in range(len(CHANNELS)))  # "max" aggregation: one scale per channel


@pytest.fixture(scope="module")
def bundle(sensor_bundle: Path) -> Bundle:
    return load_bundle(sensor_bundle)


def own_model(bundle: Bundle, seed: int, *, kind: str | None = None, **calibration: object) -> Bundle:
    """A stream's own model: the bundle's trained network with its weights nudged (`kind` None), or a fresh network
    of `kind`; `calibration` changes how its scores are formed (recent_steps, aggregation...)."""
    torch.manual_seed(seed)
    if kind is None:
        config, network = bundle.model_config, build_model(bundle.model_config, bundle.extractor.vector_shape)
        network.load_state_dict(bundle.network.state_dict())
        with torch.no_grad():
            for param in network.parameters():
                param.mul_(1 + 0.05 * torch.randn_like(param))
    else:
        config = ModelConfig(kind=kind, hidden_units=(16, 8), latent_dim=4, conv_channels=(8, 4), kernel_size=3,
                             lstm_hidden_size=8, vae_score="elbo" if kind == "vae" else "reconstruction")  # fmt: skip
        network = build_model(config, bundle.extractor.vector_shape)
    assert bundle.calibration is not None
    cal = dataclasses.replace(bundle.calibration, **calibration)  # type: ignore[arg-type]
    return dataclasses.replace(bundle, model=network.eval(), model_config=config, calibration=cal,
                               version=f"own-{seed}")  # fmt: skip


def slot_of(bundle: Bundle) -> Slot:
    return Slot(bundle, alerting=ALERTING, batch_size=1024, drift=DriftConfig(), metrics=Metrics(CollectorRegistry()))


def vectors(bundle: Bundle, count: int, seed: int) -> np.ndarray:
    size = int(np.prod(bundle.extractor.vector_shape))
    return np.random.default_rng(seed).normal(0, 1, (count, size)).astype(np.float32)


def assert_same_scores(grouped: ModelGroups, slots: dict[str, Slot], data: dict[str, np.ndarray]) -> None:
    scores = grouped.score(slots, data)
    assert set(scores) == set(slots)
    for name, slot in slots.items():
        alone = slot.scorer.score(data[name])
        np.testing.assert_allclose(scores[name].errors, alone.errors, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(scores[name].group_errors, alone.group_errors, rtol=1e-5, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", [None, "dense", "conv1d", "vae", "interp"])
def test_each_slot_scores_in_a_group_what_it_scores_alone_whatever_its_count_of_vectors(
    bundle: Bundle, kind: str | None
) -> None:
    # Different weights, different counts of vectors (padded to the most), different score forms per slot.
    slots = {
        "a": slot_of(own_model(bundle, 1, kind=kind)),
        "b": slot_of(own_model(bundle, 2, kind=kind, recent_steps=10)),
        "c": slot_of(own_model(bundle, 3, kind=kind, aggregation="max", group_scale=SCALES)),
        "d": slot_of(own_model(bundle, 4, kind=kind)),
    }
    counts = {"a": 2, "b": 4, "c": 3, "d": 3}  # padded to 4 each: within 1.5 times the real 12
    data = {name: vectors(bundle, n, seed) for seed, (name, n) in enumerate(counts.items())}
    assert_same_scores(ModelGroups(), slots, data)


def test_a_slot_replaced_by_a_new_model_scores_with_the_new_model(bundle: Bundle) -> None:
    slots = {name: slot_of(own_model(bundle, seed)) for seed, name in enumerate("abc")}
    data = {name: vectors(bundle, 2, i) for i, name in enumerate("abc")}
    grouped = ModelGroups()
    before = grouped.score(slots, data)["b"].errors
    slots["b"] = slot_of(own_model(bundle, 99))  # promoted or reloaded: same architecture, new weights
    assert_same_scores(grouped, slots, data)
    assert not np.allclose(grouped.score(slots, data)["b"].errors, before)
    slots["d"] = slot_of(own_model(bundle, 7, kind="dense"))  # a stream learned: a new slot joins the group
    slots["e"] = slot_of(own_model(bundle, 8, kind="dense"))
    data |= {"d": vectors(bundle, 1, 7), "e": vectors(bundle, 3, 8)}
    assert_same_scores(grouped, slots, data)
    grouped.forget("a")  # its stream evicted: its row is freed, and the next new slot takes it
    del slots["a"], data["a"]
    assert_same_scores(grouped, slots, data)
    slots["f"], data["f"] = slot_of(own_model(bundle, 9)), vectors(bundle, 2, 9)
    assert_same_scores(grouped, slots, data)
    slots["f"] = slot_of(own_model(bundle, 10, kind="conv1d"))  # reloaded with another architecture: alone now
    scores = grouped.score(slots, data)
    assert set(scores) == {"b", "c", "d", "e"}
    np.testing.assert_allclose(scores["b"].errors, slots["b"].scorer.score(data["b"]).errors, rtol=1e-5)


def test_streams_that_leave_give_their_rows_of_stacked_weights_back(bundle: Bundle) -> None:
    slots = {f"s{i}": slot_of(own_model(bundle, i)) for i in range(100)}
    data = {name: vectors(bundle, 1, i) for i, name in enumerate(slots)}
    grouped = ModelGroups()
    grouped.score(slots, data)
    assert grouped.rows_held == 100
    for name in list(slots)[:70]:  # evicted, or their partitions moved to another process
        grouped.forget(name)
        del slots[name], data[name]
    assert grouped.rows_held <= 40  # compacted once most rows were free: the memory of the 70 is given back
    assert_same_scores(grouped, slots, data)  # each remaining stream still scores with its own weights
    slots["new"], data["new"] = slot_of(own_model(bundle, 200)), vectors(bundle, 1, 200)
    assert_same_scores(grouped, slots, data)


def test_slots_that_cannot_share_a_call_are_left_to_score_alone(bundle: Bundle, tmp_path: Path) -> None:
    onnx_root = tmp_path / "own"
    from ae_monitor.model.bundle import save_bundle

    export_onnx(save_bundle(own_model(bundle, 5), onnx_root))
    slots = {
        "dense-1": slot_of(own_model(bundle, 1)),
        "dense-2": slot_of(own_model(bundle, 2)),
        "lstm-1": slot_of(own_model(bundle, 3, kind="lstm")),  # torch.vmap cannot batch an LSTM
        "lstm-2": slot_of(own_model(bundle, 4, kind="lstm")),
        "conv-1": slot_of(own_model(bundle, 6, kind="conv1d")),  # no other slot of its architecture
        "onnx": slot_of(load_bundle(onnx_root, backend="onnx")),  # the same architecture, but an onnx session
    }
    data = {name: vectors(bundle, 2, i) for i, name in enumerate(slots)}
    assert set(ModelGroups().score(slots, data)) == {"dense-1", "dense-2"}


def test_a_slot_with_many_vectors_beside_many_with_one_scores_alone(bundle: Bundle) -> None:
    slots = {f"s{i}": slot_of(own_model(bundle, i)) for i in range(4)}
    data = {"s0": vectors(bundle, 200, 0)} | {f"s{i}": vectors(bundle, 1, i) for i in range(1, 4)}
    assert set(ModelGroups().score(slots, data)) == {"s1", "s2", "s3"}


def _replay(bundle: Bundle, sensor_data: tuple[Path, Path], *, group_models: bool,
            swap_after: int | None = None) -> tuple[list[Alert], list[tuple[str, float, float]], float]:  # fmt: skip
    """The demo's replayed pumps, each scored by a model of its own; returns the alerts, every window's stream,
    start and score, and how many network calls scored them. `swap_after`: after that many micro-batches pump-2
    gets a new model."""
    registry = CollectorRegistry()
    engine = Engine({"pump": bundle}, alerting=ALERTING, metrics=Metrics(registry), max_gap_s=30,
                    group_models=group_models)  # fmt: skip
    source = ReplaySource([sensor_data[1]], bundle.features, chunk_samples=10)
    alerts, windows, batch = [], [], 0
    while not source.exhausted:
        records = source.poll(max_records=3)
        for record in records:
            assert isinstance(record, SensorRecord)
            if own_slot_name_missing(engine, record.stream):
                engine.score_stream_with(record.stream, own_model(bundle, int(record.stream[-1])))
        result = engine.process(records)
        alerts += result.alerts
        windows += [(w.stream, w.start_s, w.score) for w in result.windows]
        batch += 1
        if batch == swap_after:
            engine.score_stream_with("pump-2", own_model(bundle, 42))
    return alerts, windows, registry.get_sample_value("ae_monitor_scoring_batch_seconds_count") or 0.0


def own_slot_name_missing(engine: Engine, stream: str) -> bool:
    return f"own:{stream}" not in engine.bundles


def test_alerts_and_scores_through_the_engine_are_the_same_with_grouping_on_and_off(
    bundle: Bundle, sensor_data: tuple[Path, Path]
) -> None:
    on_alerts, on_windows, on_calls = _replay(bundle, sensor_data, group_models=True, swap_after=50)
    off_alerts, off_windows, off_calls = _replay(bundle, sensor_data, group_models=False, swap_after=50)
    assert on_calls < off_calls / 2  # the three pumps' models ran in one call per micro-batch, not three

    def decisions(alerts: list[Alert]) -> list[tuple[object, ...]]:
        return [(a.id, a.status, a.stream, a.bundle_version, a.event_time_s, a.ends_at_s,
                 [name for name, _ in a.top_contributors]) for a in alerts]  # fmt: skip

    assert {a.stream for a in on_alerts if a.status == "firing"} >= {"pump-2", "pump-3"}
    assert decisions(on_alerts) == decisions(off_alerts)
    np.testing.assert_allclose([a.peak_score for a in on_alerts], [a.peak_score for a in off_alerts], rtol=1e-5)
    assert [w[:2] for w in on_windows] == [w[:2] for w in off_windows]
    np.testing.assert_allclose([w[2] for w in on_windows], [w[2] for w in off_windows], rtol=1e-5)


def test_a_stream_given_a_new_model_between_micro_batches_is_scored_by_it_in_the_group(
    bundle: Bundle, sensor_data: tuple[Path, Path]
) -> None:
    def pump_2(windows: list[tuple[str, float, float]]) -> dict[float, float]:
        return {start: score for stream, start, score in windows if stream == "pump-2"}

    swapped = pump_2(_replay(bundle, sensor_data, group_models=True, swap_after=50)[1])
    kept = pump_2(_replay(bundle, sensor_data, group_models=True)[1])
    alone = pump_2(_replay(bundle, sensor_data, group_models=False, swap_after=50)[1])
    late = sorted(swapped)[-50:]
    np.testing.assert_allclose([swapped[t] for t in late], [alone[t] for t in late], rtol=1e-5)
    assert not np.allclose([swapped[t] for t in late], [kept[t] for t in late], rtol=1e-3)
