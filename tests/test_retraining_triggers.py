"""What starts a retraining of a learned per-stream model besides its alert share (serve/learning.py), in memory:
the schedule (`max_model_age_s`, counted from registry times), a drift episode of the stream's own model, and the
bound on streams retraining at once; and what a replaced or departed model leaves in /metrics (nothing)."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from prometheus_client import generate_latest
from test_learning import PROBATION, START_S, Serving, other_pump, rows
from test_retraining import windows

from ae_monitor.config import AlertingConfig, DriftConfig, LearningConfig, RetrainConfig
from ae_monitor.jobs.demo import machine
from ae_monitor.jobs.learn import StreamTrainer
from ae_monitor.model.bundle import Bundle, load_bundle, save_bundle, weights_version
from ae_monitor.registry import Registry
from ae_monitor.serve.learning import Learned, LearnJob
from ae_monitor.serve.retraining import Reservoir, Shadow, retrain_trigger

HOUR_S = 3600.0
# A small reservoir and a short shadow period: the copy trainer below fits nothing, so any length trains.
QUICK = {"enabled": True, "reservoir_samples": 400, "holdback_samples": 100, "lookback_windows": 100,
         "shadow_windows": 40, "on_drift": False}  # fmt: skip
NO_DRIFT = DriftConfig(enabled=False)


def healthy(n: int, seed: int) -> npt.NDArray[np.float64]:
    """The demo pump the route's bundle was trained on: it scores quiet."""
    return machine(n, np.random.default_rng(seed))[0]


def own_model(sensor_bundle: Path, root: Path, model: str, *, nudge: float = 0.0, parent: int | None = None,
              alias: str = "production") -> int:  # fmt: skip
    """Register the route's bundle as the next version of `model`, named after it as a learned model is, with one
    weight moved by `nudge` (a version with weights, hence a `bundle_info{version}`, of its own)."""
    bundle = load_bundle(sensor_bundle)
    with torch.no_grad():
        next(bundle.network.parameters()).view(-1)[0] += nudge
    renamed = replace(bundle, name=model, version=weights_version(bundle.network))
    registry = Registry(root)
    with tempfile.TemporaryDirectory() as staging:
        number = registry.register(model, save_bundle(renamed, Path(staging) / "bundle"), parent=parent).number
    registry.promote(model, number, alias)
    return number


class CopyTrainer:
    """Retrains by registering a nudged copy of the route's bundle as the candidate (what starts a retraining is
    under test here, not the fit); each job waits for `release`."""

    def __init__(self, sensor_bundle: Path) -> None:
        self.sensor_bundle, self.jobs, self.release = sensor_bundle, list[LearnJob](), threading.Event()
        self.release.set()

    def __call__(self, job: LearnJob) -> Learned:
        self.jobs.append(job)
        assert self.release.wait(60)
        root = Path(job.registry_root)
        number = own_model(self.sensor_bundle, root, job.model, nudge=1e-4 * len(self.jobs), parent=job.parent,
                           alias="candidate")  # fmt: skip
        path = Registry(root).version(job.model, number).bundle_path
        return Learned(job.stream, job.model, number, str(path), {"current_a": (1.0, 1.0)})


@pytest.fixture(scope="module")
def route_bundle(sensor_bundle: Path) -> Bundle:
    return load_bundle(sensor_bundle)


def serving_with(route_bundle: Bundle, root: Path, trainer: CopyTrainer, *, wall_s: list[float],
                 clock: Callable[[], float] = time.monotonic, **retrain: float) -> Serving:  # fmt: skip
    """A learner whose wall clock reads `wall_s[0]` (the test moves it)."""
    cfg = RetrainConfig.model_validate({**QUICK, **retrain})
    return Serving(route_bundle, root, trainer=trainer, learning=LearningConfig(retrain=cfg),
                   wall_clock=lambda: wall_s[0], drift=NO_DRIFT, clock=clock)  # fmt: skip


def registered_at(root: Path, model: str, alias: str) -> float:
    registered = Registry(root).resolve(model, alias).provenance["registered_at"]
    return datetime.fromisoformat(registered).timestamp()


# --- which trigger ---------------------------------------------------------------------------------------------


def test_a_full_reservoir_retrains_for_its_alert_share_first_then_a_drift_seen_a_reservoir_ago_then_its_age() -> None:
    cfg = RetrainConfig(enabled=True, reservoir_samples=4, holdback_samples=1, lookback_windows=4,
                        max_model_age_s=HOUR_S)  # fmt: skip
    kept = Reservoir(cfg, ("a",))
    kept.add_ordered(np.arange(8.0), np.zeros((8, 1)))
    kept.judge(*windows([0, 1, 2], [False] * 3))  # rows 0 and 1 kept: not full
    assert retrain_trigger(kept, cfg, drift_from=0, model_age_s=2 * HOUR_S) is None
    kept.judge(*windows([3, 4], [False] * 2))  # rows 0-3 kept: full
    assert retrain_trigger(kept, cfg, drift_from=0, model_age_s=0) == "drift"
    assert retrain_trigger(kept, cfg, drift_from=1, model_age_s=HOUR_S) == "schedule"  # 3 rows since the drift
    assert retrain_trigger(kept, cfg, drift_from=None, model_age_s=HOUR_S - 1) is None
    kept.judge(*windows([5, 6], [True] * 2))  # 2 of the last 4 windows anomalous: a new operating point
    kept.add_ordered(np.arange(8.0, 12.0), np.zeros((4, 1)))
    kept.judge(*windows([7, 8, 9, 10], [True] * 4))
    assert retrain_trigger(kept, cfg, drift_from=0, model_age_s=2 * HOUR_S) == "alert share"
    no_schedule = cfg.model_copy(update={"max_model_age_s": 0.0})
    kept.sustained = False
    assert retrain_trigger(kept, no_schedule, drift_from=None, model_age_s=1e9) is None


# --- the schedule ----------------------------------------------------------------------------------------------


def test_a_model_older_than_max_model_age_s_retrains_on_its_reservoir_and_a_younger_one_does_not(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    own_model(sensor_bundle, tmp_path, "pump-a")
    born = registered_at(tmp_path, "pump-a", "production")
    wall = [born + 23 * HOUR_S]
    trainer = CopyTrainer(sensor_bundle)
    serving = serving_with(route_bundle, tmp_path, trainer, wall_s=wall, max_model_age_s=24 * HOUR_S)
    serving.feed([rows("pump-a", healthy(600, seed=1), 0)])
    learning = serving.learner._streams["pump-a"]
    assert learning.reservoir is not None
    assert learning.reservoir.full  # due by its data, but 23 h old: not yet
    assert (serving.learner.counts()["retraining"], trainer.jobs) == (0, [])
    wall[0] = born + 24 * HOUR_S
    serving.learner.poll()
    assert serving.learner.counts()["retraining"] == 1
    serving.wait_until(lambda: learning.training is None)
    [job] = trainer.jobs
    assert job.parent == 1
    assert "retrained for: schedule" in job.note
    assert len(job.ts_s) == 300  # the reservoir but its held-back rows
    assert job.ts_s[-1] < START_S + 600
    assert learning.shadow is not None  # the candidate scores in shadow, decided like any other
    serving.feed([rows("pump-a", healthy(200, seed=2), 600)])
    assert serving.sample("ae_monitor_learning_retrainings_total", outcome="promoted") == 1
    assert learning.version == 2


def test_the_schedule_counts_from_the_registry_so_a_restart_does_not_reset_it_and_a_discarded_candidate_waits(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    own_model(sensor_bundle, tmp_path, "pump-b")
    born = registered_at(tmp_path, "pump-b", "production")
    wall = [born + 100 * HOUR_S]  # the process (re)starts long after the model was registered
    serving = serving_with(route_bundle, tmp_path, CopyTrainer(sensor_bundle), wall_s=wall,
                           max_model_age_s=24 * HOUR_S)  # fmt: skip
    serving.feed([rows("pump-b", healthy(100, seed=3), 0)])
    assert serving.learner._streams["pump-b"].model_time_s == born
    # A candidate registered (and discarded) since: the next scheduled try waits a period from its registration.
    candidate = own_model(sensor_bundle, tmp_path, "pump-b", nudge=1e-3, parent=1, alias="candidate")
    again = serving_with(route_bundle, tmp_path, CopyTrainer(sensor_bundle), wall_s=wall, max_model_age_s=24 * HOUR_S)
    again.feed([rows("pump-b", healthy(100, seed=3), 0)])
    assert again.learner._streams["pump-b"].model_time_s == registered_at(tmp_path, "pump-b", "candidate")
    assert Registry(tmp_path).resolve("pump-b", "candidate").number == candidate


def test_at_most_max_retraining_streams_retrain_at_once_and_the_others_wait_their_turn(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    streams = [f"pump-{i}" for i in range(5)]
    for stream in streams:
        own_model(sensor_bundle, tmp_path, stream)
    wall = [registered_at(tmp_path, streams[-1], "production") + 48 * HOUR_S]  # every model is due
    trainer = CopyTrainer(sensor_bundle)
    trainer.release.clear()  # the first candidate trains until the test lets it finish
    serving = serving_with(route_bundle, tmp_path, trainer, wall_s=wall, max_model_age_s=24 * HOUR_S,
                           max_retraining_streams=2)  # fmt: skip
    seen: list[int] = []
    for step in range(12):
        for i, stream in enumerate(streams):
            serving.feed([rows(stream, healthy(200, seed=10 * step + i), 200 * step)])
            seen.append(serving.learner.counts()["retraining"])
        if step == 3:
            assert serving.learner.counts()["retraining"] == 2  # due, all five; retraining, two
            assert len(trainer.jobs) == 1  # (one worker: the second job waits in its queue)
            trainer.release.set()
        if step >= 3:
            serving.wait_until(lambda: all(s.training is None for s in serving.learner._streams.values()))
    assert max(seen) == 2
    # Each had its turn: a stream just retrained (its model the youngest) waits behind those due longer.
    assert {job.stream for job in trainer.jobs} == set(streams)
    assert serving.sample("ae_monitor_learning_retrainings_total", outcome="promoted") >= 5


# --- the drift watch --------------------------------------------------------------------------------------------


def quieter(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The same pump with its sensors' noise averaged down (a sensor replaced by a better one): its scores fall
    well below those its threshold was calibrated on, which the drift watch sees and no alert does."""
    kernel = np.ones(5) / 5
    return np.stack([np.convolve(values[:, j], kernel, mode="same") for j in range(values.shape[1])], axis=1)


def test_a_drift_episode_of_a_streams_own_model_retrains_it_on_rows_kept_after_the_episode_began(
    route_bundle: Bundle, tmp_path: Path
) -> None:
    jobs: list[LearnJob] = []

    def recording(job: LearnJob) -> Learned:
        jobs.append(job)
        return StreamTrainer()(job)

    retrain = RetrainConfig(enabled=True, reservoir_samples=2000, holdback_samples=300, shadow_windows=100)
    serving = Serving(route_bundle, tmp_path, trainer=recording, learning=LearningConfig(retrain=retrain),
                      drift=DriftConfig(window_scores=200, min_scores=100))  # fmt: skip
    serving.feed([rows("pump-d", healthy(PROBATION, seed=21), 0)])
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    learning = serving.learner._streams["pump-d"]
    serving.feed([rows("pump-d", healthy(400, seed=22), PROBATION)])
    assert learning.drift_from is None, "its own normal data drifted"
    shift = PROBATION + 400
    serving.feed([rows("pump-d", quieter(healthy(2600, seed=23)), shift)])
    serving.wait_until(lambda: len(jobs) == 2 and learning.training is None, timeout_s=120)
    retraining = jobs[1]
    assert "retrained for: drift" in retraining.note
    assert retraining.ts_s[0] >= START_S + shift  # nothing from before the drift
    assert learning.shadow is not None  # its candidate scores in shadow, decided like any other


# --- metric series ---------------------------------------------------------------------------------------------


def exposition(serving: Serving) -> list[str]:
    return [line for line in generate_latest(serving.metrics.registry).decode().splitlines()
            if not line.startswith("#")]  # fmt: skip


def test_the_metrics_exposition_does_not_grow_across_promotions_and_a_stream_that_leaves_leaves_no_series(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    own_model(sensor_bundle, tmp_path, "pump-m")
    wall = [time.time()]
    serving = serving_with(route_bundle, tmp_path, CopyTrainer(sensor_bundle), wall_s=wall, max_model_age_s=HOUR_S)
    sizes = []
    for cycle in range(3):
        wall[0] = time.time() + 2 * HOUR_S  # its model is due: one retraining starts once its reservoir is full
        serving.feed([rows("pump-m", healthy(600, seed=30 + cycle), 700 * cycle)])
        wall[0] = time.time()  # ... and no other
        serving.wait_until(lambda: serving.learner._streams["pump-m"].training is None)
        serving.feed([rows("pump-m", healthy(100, seed=40 + cycle), 700 * cycle + 600)])
        assert serving.sample("ae_monitor_learning_retrainings_total", outcome="promoted") == cycle + 1
        sizes.append(len(exposition(serving)))
    assert sizes[0] == sizes[1] == sizes[2], sizes
    [info] = [line for line in exposition(serving) if line.startswith('ae_monitor_bundle_info{bundle="pump-m"')]
    assert info.endswith(" 1.0")  # the loaded version only; the versions it replaced left no series at 0
    serving.engine.drop_streams(["pump-m"])
    serving.learner.drop(["pump-m"])
    assert [line for line in exposition(serving) if "pump-m" in line] == []


def test_a_candidate_in_shadow_raises_no_drift_warning_under_the_production_models_name(
    route_bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    # The route's bundle at another pump's operating point: its scores are far from its calibration (KS 1.0).
    shadow = Shadow("pump-s", route_bundle, Learned("pump-s", "pump-s", 2, ""), alerting=AlertingConfig())
    with caplog.at_level(logging.WARNING, logger="ae_monitor.drift"):
        for first in range(0, 1000, 200):
            shadow.feed([rows("pump-s", other_pump(200, seed=first), first)])
    assert shadow.windows > 500
    assert [r.message for r in caplog.records] == []


def test_a_stream_evicted_while_it_retrained_is_forgotten_once_idle_and_frees_its_place(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    own_model(sensor_bundle, tmp_path, "pump-e")
    now, trainer = [0.0], CopyTrainer(sensor_bundle)
    trainer.release.clear()
    serving = serving_with(route_bundle, tmp_path, trainer, wall_s=[time.time() + 2 * HOUR_S], clock=lambda: now[0],
                           max_model_age_s=HOUR_S)  # fmt: skip
    serving.feed([rows("pump-e", healthy(600, seed=50), 0)])
    assert serving.learner.counts()["retraining"] == 1
    serving.engine.drop_streams(["pump-e"], reason="idle")  # the stream went quiet while its candidate trained
    serving.learner.evicted(["pump-e"])
    assert "pump-e" in serving.learner._streams  # its training in flight still registers a candidate
    trainer.release.set()
    serving.wait_until(lambda: serving.learner._streams["pump-e"].shadow is not None)
    now[0] += 3601.0  # streams.idle_eviction_s: its candidate will never see a row
    serving.learner.poll()
    assert "pump-e" not in serving.learner._streams
    assert serving.learner.counts()["retraining"] == 0
    assert [line for line in exposition(serving) if "pump-e" in line] == []
