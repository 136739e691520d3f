"""Per-stream learning (serve/learning.py, jobs/learn.py), in memory: the probation buffer, the learning -> scoring
state machine, the background trainer and the registry it fills. tests/test_learning_serve.py runs it in `serve`
against a real broker."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from ae_monitor.config import DriftConfig, LearningConfig, RouteConfig, config_from_dict, dump_config
from ae_monitor.engine import Engine
from ae_monitor.engine.routing import UNSCORED
from ae_monitor.errors import ConfigError, DataError
from ae_monitor.health import Health, HealthServer
from ae_monitor.jobs.demo import CHANNELS, DEMO_CONFIG, Fault, _inject, machine
from ae_monitor.jobs.learn import StreamTrainer
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.records import Alert, SampleRows, SensorRecord
from ae_monitor.registry import Registry, stream_model_name
from ae_monitor.serve.learning import Learned, Learner, LearnJob, Probation, learn_routes, trainer_executor

PROBATION = 1700
START_S = 1_700_000_000.0


def other_pump(n: int, seed: int, fault: Fault | None = None) -> npt.NDArray[np.float64]:
    """A pump at another operating point than the route bundle's: more current, hotter (normal for it)."""
    values, labels = machine(n, np.random.default_rng(seed))
    values = values * np.array([1.0, 1.3, 1.0, 1.0]) + np.array([0.0, 0.0, 0.0, 8.0])
    if fault is not None:
        _inject(values, labels, fault, np.random.default_rng(seed + 1))
    return values


def rows(stream: str, values: npt.NDArray[np.float64], first: int) -> SampleRows:
    ts = START_S + np.arange(first, first + len(values), dtype=np.float64)
    return SampleRows([stream] * len(values), ts, values, CHANNELS)


class Serving:
    """The engine and a learner as serve's loop drives them: observe, process, poll."""

    def __init__(
        self,
        bundle: Bundle,
        root: Path,
        *,
        trainer: Callable[[LearnJob], Learned] | None = None,
        learning: LearningConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        drift: DriftConfig | None = None,
        key: str = "pump",
        learn_from: Literal["scratch", "route_bundle"] = "scratch",
        executor: Callable[[], Executor] = lambda: ThreadPoolExecutor(max_workers=1),
    ) -> None:
        config = config_from_dict(DEMO_CONFIG)
        route = RouteConfig(bundle_path=key, learn="per_stream", probation_samples=PROBATION,
                            learned_registry=str(root), learn_from=learn_from)  # fmt: skip
        self.metrics = Metrics(CollectorRegistry())
        self.engine = Engine({key: bundle}, alerting=config.alerting, metrics=self.metrics, routes=[(route, key)],
                             max_gap_s=config.replay.max_gap_s, drift=drift)  # fmt: skip
        self.trainer = StreamTrainer()
        learn = learn_routes(config, [(route, key)], {key: bundle}, self.trainer)
        self.learner = Learner(learn, engine=self.engine, trainer=trainer or self.trainer,
                               executor=executor, cfg=learning or LearningConfig(),
                               metrics=self.metrics, alerting=config.alerting, clock=clock,
                               wall_clock=wall_clock)  # fmt: skip
        self.alerts: list[Alert] = []

    def feed(self, items: list[SampleRows | SensorRecord], *, chunk: int = 200) -> None:
        for item in items:
            pieces = (
                [item]
                if isinstance(item, SensorRecord)
                else [_slice(item, i, chunk) for i in range(0, len(item), chunk)]
            )
            for piece in pieces:
                self.learner.observe([piece])
                result = self.engine.process([piece])
                self.learner.scored(result)
                self.alerts += result.alerts
                self.learner.poll()

    def wait_until(self, done: Callable[[], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
            self.learner.poll()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def weight_distance(a: Bundle, b: Bundle) -> float:
    """How far the weights of `a` are from those of `b` (same architecture), relative to the size of b's."""
    theirs = b.network.state_dict()
    pairs = [(v.float(), theirs[k].float()) for k, v in a.network.state_dict().items() if v.is_floating_point()]
    return float(
        sum(float((x - y).norm()) ** 2 for x, y in pairs) ** 0.5 / sum(float(y.norm()) ** 2 for _, y in pairs) ** 0.5
    )


def _slice(item: SampleRows, start: int, size: int) -> SampleRows:
    stop = start + size
    return SampleRows(item.streams[start:stop], item.ts_s[start:stop], item.values[start:stop], item.channels)


@pytest.fixture(scope="module")
def route_bundle(sensor_bundle: Path) -> Bundle:
    return load_bundle(sensor_bundle)


@pytest.fixture(scope="module")
def learned(route_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Serving, Path]:
    """A stream of another operating point learned from its first PROBATION samples, then fed more normal data
    and a fault."""
    root = tmp_path_factory.mktemp("learned-registry")
    serving = Serving(route_bundle, root)
    probation = other_pump(PROBATION, seed=11)
    serving.feed([rows("site a/pump 7", probation, 0)])
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    fault = Fault("vibration_rms", 600, 900, "decouple")
    serving.feed([rows("site a/pump 7", other_pump(1000, seed=12, fault=fault), PROBATION + 10)])
    return serving, root


def test_the_probation_buffer_keeps_the_first_rows_in_order_up_to_its_limit_in_the_training_channel_order() -> None:
    probation = Probation(5, ("a", "b"))
    probation.add(
        np.array([1.0, 2.0, 2.0, 1.5, 3.0]), np.array([[10, 1], [20, 2], [0, 0], [0, 0], [30, 3]]), ("b", "a")
    )
    probation.add(np.array([4.0, 5.0, 6.0]), np.array([[4, 40], [5, 50], [6, 60]]), ("a", "b"))
    ts, values = probation.rows()
    assert probation.full
    assert ts.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # a repeated and a late row skipped; no room for 6.0
    assert values.tolist() == [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]]


def test_a_probation_with_a_time_span_ends_once_its_rows_span_it_but_never_below_the_fewest_rows_training_needs(
) -> None:  # fmt: skip
    probation = Probation(1000, ("a",), span_s=10.0, min_count=15)
    probation.add(np.arange(12, dtype=np.float64), np.zeros((12, 1)), ("a",))  # spans 11 s, but 12 rows < 15
    assert not probation.full
    probation.add(np.arange(12, 16, dtype=np.float64), np.zeros((4, 1)), ("a",))
    assert probation.full
    assert probation.count == 16
    probation.add(np.array([20.0]), np.zeros((1, 1)), ("a",))
    assert probation.count == 16  # it takes no more


def test_the_fewest_rows_training_needs_are_found_at_startup(route_bundle: Bundle, tmp_path: Path) -> None:
    route = RouteConfig(bundle_path="pump", learn="per_stream", learned_registry=str(tmp_path), probation_s=600)
    ((_, learn),) = learn_routes(config_from_dict({}), [(route, "pump")], {"pump": route_bundle}, StreamTrainer())
    assert learn is not None
    StreamTrainer().check(learn.config, learn.min_samples)
    with pytest.raises(DataError):
        StreamTrainer().check(learn.config, learn.min_samples - 1)


def test_rows_without_every_training_channel_are_not_kept() -> None:
    probation = Probation(5, ("a", "b"))
    probation.add(np.array([1.0]), np.array([[1.0]]), ("a",))
    assert probation.count == 0


def test_a_stream_model_name_is_a_usable_registry_name_distinct_per_stream() -> None:
    names = {stream_model_name(s) for s in ("pump/7", "pump:7", "pump-7", "../x", "-")}
    assert len(names) == 5
    assert all(Registry("/nowhere")._model_dir(name) for name in names)  # check_name raises on an unusable one


def test_a_new_stream_is_scored_by_the_route_bundle_while_it_learns(route_bundle: Bundle, tmp_path: Path) -> None:
    release = threading.Event()

    def slow(job: LearnJob) -> Learned:
        release.wait(30)
        raise DataError("stopped by the test")

    serving = Serving(route_bundle, tmp_path, trainer=slow)
    serving.feed([rows("pump-x", other_pump(PROBATION, seed=3), 0)])
    try:
        assert serving.learner.counts() == {"learning": 1, "scoring": 0, "retraining": 0}
        assert serving.engine.streams["pump-x"].slot == "pump"
        assert serving.sample("ae_monitor_windows_scored_total", bundle="pump") > 0
        assert serving.sample("ae_monitor_learning_streams", state="learning") == 1
    finally:
        release.set()


def test_the_main_loop_does_not_wait_for_a_training(route_bundle: Bundle, tmp_path: Path) -> None:
    release = threading.Event()

    def slow(job: LearnJob) -> Learned:
        release.wait(30)
        raise DataError("stopped by the test")

    serving = Serving(route_bundle, tmp_path, trainer=slow)
    try:
        serving.feed([rows("pump-x", other_pump(PROBATION, seed=3), 0)])
        began = time.monotonic()
        serving.feed([rows("pump-x", other_pump(100, seed=4), PROBATION + 1)])
        assert time.monotonic() - began < 5  # scored on while the training blocks its worker
        assert serving.engine.streams["pump-x"].slot == "pump"
    finally:
        release.set()


def test_a_learned_stream_is_registered_with_its_data_span_and_scored_by_its_own_model(
    learned: tuple[Serving, Path],
) -> None:
    serving, root = learned
    model = stream_model_name("site a/pump 7")
    version = Registry(root).resolve(model, "production")
    assert version.number == 1
    span = version.provenance["training"]["data_span"]
    assert span == {"start": "2023-11-14T22:13:20+00:00", "end": "2023-11-14T22:41:39+00:00"}
    assert version.provenance["metrics"]["samples"] == PROBATION
    assert serving.learner.counts() == {"learning": 0, "scoring": 1, "retraining": 0}
    assert serving.engine.streams["site a/pump 7"].slot == "own:site a/pump 7"
    assert serving.sample("ae_monitor_learning_trainings_total", outcome="ok") == 1
    assert serving.sample("ae_monitor_windows_scored_total", bundle=model) > 0


def test_after_learning_the_fault_alerts_and_the_normal_data_does_not(learned: tuple[Serving, Path]) -> None:
    serving, _ = learned
    model = stream_model_name("site a/pump 7")
    own = [a for a in serving.alerts if a.bundle_name == model and a.status == "firing"]
    window_s = DEMO_CONFIG["features"]["sensor"]["window_samples"]  # an alert's event time is its window's start
    first_faulty_window = START_S + PROBATION + 10 + 600 - window_s + 1
    assert own, "the fault raised no alert of the stream's own model"
    assert all(a.event_time_s >= first_faulty_window for a in own), [a.event_time_s - first_faulty_window for a in own]


def test_a_stream_with_a_registered_model_is_scored_by_it_without_training(
    learned: tuple[Serving, Path], route_bundle: Bundle
) -> None:
    _, root = learned

    def refuse(job: LearnJob) -> Learned:
        raise AssertionError("trained again")

    restarted = Serving(route_bundle, root, trainer=refuse)
    restarted.feed([rows("site a/pump 7", other_pump(50, seed=13), 5000)])
    assert restarted.learner.counts() == {"learning": 0, "scoring": 1, "retraining": 0}
    assert restarted.engine.streams["site a/pump 7"].slot == "own:site a/pump 7"
    assert [v.number for v in Registry(root).versions(stream_model_name("site a/pump 7"))] == [1]


def test_a_scoring_stream_follows_its_models_production_alias_when_it_is_promoted_or_rolled_back(
    sensor_bundle: Path, route_bundle: Bundle, tmp_path: Path
) -> None:
    registry, now = Registry(tmp_path), [0.0]
    registry.promote("pump-r", registry.register("pump-r", sensor_bundle).number, "production")

    def refuse(job: LearnJob) -> Learned:
        raise AssertionError("trained although a model is registered")

    serving = Serving(route_bundle, tmp_path, trainer=refuse, clock=lambda: now[0])
    serving.feed([rows("pump-r", other_pump(50, seed=9), 0)])
    assert serving.learner._streams["pump-r"].version == 1
    registry.promote("pump-r", registry.register("pump-r", sensor_bundle).number, "production")
    serving.learner.poll()
    assert serving.learner._streams["pump-r"].version == 1  # not before service.reload_check_s
    now[0] = 11.0
    serving.learner.poll()
    assert serving.learner._streams["pump-r"].version == 2
    registry.rollback("pump-r", "production")
    now[0] = 22.0
    serving.learner.poll()
    assert serving.learner._streams["pump-r"].version == 1
    assert serving.sample("ae_monitor_bundle_reloads_total", result="ok") == 2
    assert serving.engine.streams["pump-r"].slot == "own:pump-r"


def test_a_learning_stream_that_sends_nothing_for_the_idle_eviction_time_is_forgotten_with_its_buffer(
    route_bundle: Bundle, tmp_path: Path
) -> None:
    now = [0.0]
    serving = Serving(route_bundle, tmp_path, clock=lambda: now[0])
    serving.feed([rows("pump-gone", other_pump(100, seed=6), 0), rows("pump-here", other_pump(100, seed=7), 0)])
    now[0] = 3000.0
    serving.feed([rows("pump-here", other_pump(100, seed=8), 200)])
    now[0] = 3601.0
    serving.learner.poll()
    assert set(serving.learner._streams) == {"pump-here"}


def test_a_failed_training_is_counted_and_tried_again_later(route_bundle: Bundle, tmp_path: Path) -> None:
    now = [0.0]
    calls: list[int] = []

    def flaky(job: LearnJob) -> Learned:
        calls.append(len(job.ts_s))
        if len(calls) == 1:
            raise DataError("the registry volume is full")
        return StreamTrainer()(job)

    serving = Serving(route_bundle, tmp_path, trainer=flaky, learning=LearningConfig(retry_after_s=60),
                      clock=lambda: now[0])  # fmt: skip
    serving.feed([rows("pump-x", other_pump(PROBATION, seed=5), 0)])
    serving.wait_until(lambda: serving.sample("ae_monitor_learning_trainings_total", outcome="failed") == 1)
    serving.learner.poll()
    assert calls == [PROBATION]  # not before retry_after_s
    assert serving.learner.counts()["learning"] == 1
    now[0] = 61.0
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    assert calls == [PROBATION, PROBATION]  # the same probation data again


class DiesOnce:
    """A trainer whose worker process dies (as when the kernel kills it for memory) on its first job."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def check(self, config: Any, samples: int) -> None:
        StreamTrainer().check(config, samples)

    def __call__(self, job: LearnJob) -> Learned:
        if not self.marker.exists():
            self.marker.touch()
            os._exit(137)
        return StreamTrainer()(job)


def test_a_worker_process_that_dies_is_a_failed_training_and_a_new_worker_takes_the_retry(
    route_bundle: Bundle, tmp_path: Path
) -> None:
    now = [0.0]
    process = LearningConfig(worker="process", retry_after_s=60)
    serving = Serving(route_bundle, tmp_path, trainer=DiesOnce(tmp_path / "died"), clock=lambda: now[0],
                      learning=process, executor=lambda: trainer_executor(process))  # fmt: skip
    serving.feed([rows("pump-x", other_pump(PROBATION, seed=41), 0)])
    serving.wait_until(lambda: serving.sample("ae_monitor_learning_trainings_total", outcome="failed") == 1)
    now[0] = 61.0
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    serving.learner.close()


def test_trainings_in_flight_are_bounded(route_bundle: Bundle, tmp_path: Path) -> None:
    release, started = threading.Event(), []

    def slow(job: LearnJob) -> Learned:
        started.append(job.stream)
        release.wait(30)
        raise DataError("stopped by the test")

    serving = Serving(route_bundle, tmp_path, trainer=slow, learning=LearningConfig(max_pending_trainings=1))
    try:
        serving.feed([rows("pump-a", other_pump(PROBATION, seed=6), 0), rows("pump-b", other_pump(PROBATION, 7), 0)])
        time.sleep(0.2)
        assert started == ["pump-a"]
    finally:
        release.set()


def test_probation_buffers_are_bounded_and_a_waiting_stream_buffers_once_there_is_room(
    route_bundle: Bundle, tmp_path: Path
) -> None:
    serving = Serving(route_bundle, tmp_path, learning=LearningConfig(max_probation_streams=1))
    serving.feed([rows("pump-a", other_pump(100, seed=6), 0), rows("pump-b", other_pump(100, seed=7), 0)])
    assert serving.learner._streams["pump-a"].probation is not None
    assert serving.learner._streams["pump-b"].probation is None
    serving.learner.drop(["pump-a"])
    serving.learner.poll()
    assert serving.learner._streams["pump-b"].probation is not None


def test_a_route_without_a_bundle_leaves_its_streams_unscored_until_they_have_learned_their_model(
    tmp_path: Path,
) -> None:
    settings = {**DEMO_CONFIG, "features": {"kind": "sensor", "sensor": {**DEMO_CONFIG["features"]["sensor"],
                                                                         "channels": list(CHANNELS)}}}  # fmt: skip
    (tmp_path / "learned.toml").write_text(dump_config(config_from_dict(settings)))
    route = RouteConfig(learn="per_stream", probation_samples=PROBATION, learned_registry=str(tmp_path / "registry"),
                        learn_config=str(tmp_path / "learned.toml"))  # fmt: skip
    config = config_from_dict(DEMO_CONFIG)
    metrics = Metrics(CollectorRegistry())
    engine = Engine({}, alerting=config.alerting, metrics=metrics, routes=[(route, UNSCORED)])
    learner = Learner(learn_routes(config, [(route, UNSCORED)], {}, StreamTrainer()), engine=engine,
                      trainer=StreamTrainer(), executor=lambda: ThreadPoolExecutor(max_workers=1), cfg=LearningConfig(),
                      metrics=metrics)  # fmt: skip
    probation = rows("pump-n", other_pump(PROBATION, seed=41), 0)
    learner.observe([probation])
    result = engine.process([probation])
    assert not result.windows
    assert not result.dead_letters
    assert result.progress.positions() == [None] * PROBATION  # nothing to wait for: committed as they come
    deadline = time.monotonic() + 120
    while learner.counts()["scoring"] == 0:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
        learner.poll()
    later = rows("pump-n", other_pump(100, seed=42), PROBATION + 10)
    learner.observe([later])
    assert len(engine.process([later]).windows) == 100 - config.features.sensor.window_samples + 1


def test_a_stream_model_can_be_the_route_bundles_network_fine_tuned_on_the_streams_rows(
    sensor_bundle: Path, route_bundle: Bundle, tmp_path: Path
) -> None:
    serving = Serving(route_bundle, tmp_path, key=str(sensor_bundle), learn_from="route_bundle")
    serving.feed([rows("pump-ft", other_pump(PROBATION, seed=41), 0)])
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    version = Registry(tmp_path).resolve("pump-ft", "production")
    assert f"fine-tuned from pump version {route_bundle.version}" in version.provenance["note"]
    fault = Fault("vibration_rms", 600, 900, "decouple")
    serving.feed([rows("pump-ft", other_pump(1000, seed=42, fault=fault), PROBATION + 10)])
    own = [a for a in serving.alerts if a.bundle_name == "pump-ft" and a.status == "firing"]
    window_s = DEMO_CONFIG["features"]["sensor"]["window_samples"]
    assert own
    assert all(a.event_time_s >= START_S + PROBATION + 10 + 600 - window_s + 1 for a in own), own


def test_the_trainer_fine_tunes_the_route_bundles_network_rather_than_a_fresh_one(
    sensor_bundle: Path, route_bundle: Bundle, tmp_path: Path
) -> None:
    one_epoch = config_from_dict({**DEMO_CONFIG, "training": {**DEMO_CONFIG["training"], "epochs": 1}})
    values = other_pump(PROBATION, seed=41)
    ts = START_S + np.arange(PROBATION, dtype=np.float64)

    def learn(model: str, init: str | None) -> Bundle:
        job = LearnJob("pump-ft", model, str(tmp_path), one_epoch, ts, values, CHANNELS, "test", init)
        return load_bundle(StreamTrainer()(job).bundle_path)

    tuned, fresh = learn("tuned", str(sensor_bundle)), learn("fresh", None)
    # One epoch moves a network little: the fine-tuned one is still near the route's, the fresh one near its
    # random start.
    assert weight_distance(tuned, route_bundle) < 0.25 * weight_distance(fresh, route_bundle)


def test_fine_tuning_needs_the_route_bundles_features_and_model(route_bundle: Bundle, tmp_path: Path) -> None:
    (tmp_path / "wider.toml").write_text('[features]\nkind = "sensor"\n[model]\nhidden_units = [256, 128]\n')
    route = RouteConfig(bundle_path="pump", learn="per_stream", learned_registry=str(tmp_path),
                        learn_config=str(tmp_path / "wider.toml"), learn_from="route_bundle")  # fmt: skip
    with pytest.raises(ConfigError, match=r"routes\[0\].learn_from: fine-tuning the route's bundle needs"):
        learn_routes(config_from_dict({}), [(route, "pump")], {"pump": route_bundle}, StreamTrainer())


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"learn": "per_stream"}, "learn = 'per_stream' needs learned_registry"),
        ({"learned_registry": "/srv/learned"}, "only used with learn = 'per_stream'"),
        ({"learn": "per_stream", "learned_registry": "http://mlflow:5000"}, "must be a folder"),
        ({"learn": "per_stream", "learned_registry": "/srv/l", "probation_samples": 0}, "greater than 0"),
        ({"bundle_path": None}, "bundle_path is required"),
        ({"bundle_path": None, "learn": "per_stream", "learned_registry": "/srv/l"}, "needs learn_config"),
    ],
)
def test_learning_settings_are_checked_when_the_config_loads(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"routes": [{"bundle_path": "b", **route}]})


def test_a_route_whose_learned_models_would_hear_audio_is_refused_at_startup(route_bundle: Bundle,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "audio.toml").write_text('[features]\nkind = "logmel"\n')
    route = RouteConfig(bundle_path="pump", learn="per_stream", learned_registry=str(tmp_path),
                        learn_config=str(tmp_path / "audio.toml"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"routes\[0\].learn: per-stream learning supports sensor streams only"):
        learn_routes(config_from_dict({}), [(route, "pump")], {"pump": route_bundle}, StreamTrainer())


def test_too_few_probation_samples_to_train_and_calibrate_are_refused_at_startup(route_bundle: Bundle,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    route = RouteConfig(bundle_path="pump", learn="per_stream", learned_registry=str(tmp_path), probation_samples=60)
    with pytest.raises(ConfigError, match=r"routes\[0\].probation_samples: 60 samples cannot train a model"):
        learn_routes(config_from_dict({}), [(route, "pump")], {"pump": route_bundle}, StreamTrainer())


# --- /readyz ---------------------------------------------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[Health, int]]:
    health = Health(stale_after_s=30)
    server = HealthServer("127.0.0.1", 0, registry=CollectorRegistry(), health=health).start()
    yield health, server.port
    server.stop()


def test_readyz_shows_the_streams_per_learning_state_as_text_and_json(health_server: tuple[Health, int]) -> None:
    health, port = health_server
    health.describe("learning", lambda: {"learning": 2, "scoring": 5})

    def get(path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()

    status, text = get("/readyz")
    assert status == 503
    assert "learning: learning=2 scoring=5\n" in text
    _, body = get("/readyz?format=json")
    assert json.loads(body)["learning"] == {"learning": 2, "scoring": 5}
    assert json.loads(body)["ready"] is False


def test_an_idle_stream_is_forgotten_with_its_probation_buffer_or_its_model_and_comes_back_to_its_registered_model(
    learned: tuple[Serving, Path],
) -> None:
    serving, _ = learned
    serving.feed([rows("pump-idle", other_pump(100, seed=8), 0)])
    idle = ["pump-idle", "site a/pump 7"]
    serving.engine.drop_streams(idle, reason="idle")  # as Engine.evict_idle does before serve tells the learner
    serving.learner.evicted(idle)
    assert serving.learner._streams == {}
    assert "own:site a/pump 7" not in serving.engine.bundles  # its model is no longer held in memory
    serving.feed([rows("site a/pump 7", other_pump(100, seed=9), PROBATION + 2000)])
    assert serving.learner.counts() == {"learning": 0, "scoring": 1, "retraining": 0}  # from the registry
    assert serving.learner._streams["site a/pump 7"].version == 1
