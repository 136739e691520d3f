"""Retraining of learned per-stream models with shadow promotion (serve/learning.py, jobs/learn.py), in memory: the
reservoir of rows that did not alert, the alert-share trigger, the candidate in shadow and the decision. The
real-broker run is in tests/test_learning_serve.py."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from test_learning import PROBATION, START_S, Serving, other_pump, rows

from ae_monitor.config import LearningConfig, RetrainConfig, RouteConfig, config_from_dict
from ae_monitor.errors import ConfigError
from ae_monitor.jobs.demo import DEMO_CONFIG, Fault
from ae_monitor.jobs.learn import StreamTrainer
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.registry import Registry
from ae_monitor.serve.learning import Learned, LearnJob, Reservoir, Shadow, learn_routes, shadow_decision

STREAM = "pump-s"
RETRAIN = RetrainConfig(enabled=True, reservoir_samples=2000, holdback_samples=300, lookback_windows=100,
                        alert_share=0.5, shadow_windows=200)  # fmt: skip
WINDOW = DEMO_CONFIG["features"]["sensor"]["window_samples"]


def shifted_pump(n: int, seed: int, fault: Fault | None = None) -> npt.NDArray[np.float64]:
    """`other_pump` at a new operating point: it draws more current and runs hotter still (normal for it now)."""
    return other_pump(n, seed, fault) + np.array([0.0, 2.5, 0.0, 6.0])


@pytest.fixture(scope="module")
def route_bundle(sensor_bundle: Path) -> Bundle:
    return load_bundle(sensor_bundle)


def reservoir(limit: int = 10, lookback: int = 4, share: float = 0.5) -> Reservoir:
    cfg = RetrainConfig(enabled=True, reservoir_samples=limit, holdback_samples=1, lookback_windows=lookback,
                        alert_share=share)  # fmt: skip
    return Reservoir(cfg, ("a",))


def windows(starts: list[float], anomalous: list[bool], size: float = 2.0) -> tuple:  # type: ignore[type-arg]
    start = np.array(starts, dtype=np.float64)
    return start, start + size, np.array(anomalous)


# --- the reservoir ---------------------------------------------------------------------------------------------


def test_the_reservoir_keeps_the_rows_of_quiet_windows_and_leaves_out_those_of_an_anomalous_one() -> None:
    kept = reservoir()
    kept.add_ordered(np.arange(8.0), np.arange(8.0)[:, None])
    kept.judge(*windows([0, 1, 2, 3, 4, 5, 6], [False, False, False, True, False, False, False]))
    ts, values = kept.rows()
    # Rows before the last window's start (6) have all their verdicts; window [3, 5) was anomalous.
    assert ts.tolist() == [0, 1, 2, 5]
    assert values[:, 0].tolist() == [0, 1, 2, 5]
    assert not kept.due


def test_the_reservoir_keeps_only_the_newest_rows_up_to_its_limit() -> None:
    kept = reservoir(limit=3)
    for first in (0.0, 3.0):
        kept.add_ordered(first + np.arange(3.0), np.zeros((3, 1)))
        kept.judge(*windows([first, first + 1, first + 2], [False] * 3))
    assert kept.rows()[0].tolist() == [2, 3, 4]
    assert kept.count == 3


def test_a_sustained_alert_share_is_a_new_operating_point_whose_rows_replace_the_old_ones_and_make_it_due() -> None:
    kept = reservoir(limit=4, lookback=4, share=0.5)
    kept.add_ordered(np.arange(8.0), np.zeros((8, 1)))
    kept.judge(*windows([0, 1, 2], [False, False, False]))
    assert kept.rows()[0].tolist() == [0, 1]
    kept.add_ordered(np.arange(8.0, 12.0), np.zeros((4, 1)))
    # From window 3 on every window is anomalous: the share reaches 2 of 4 at window 4.
    kept.judge(*windows([3, 4, 5, 6, 7, 8, 9, 10], [True] * 8))
    ts, _ = kept.rows()
    assert ts.tolist() == [6, 7, 8, 9]  # rows 0-5 lay in the old level or its first anomalous windows: gone
    assert kept.sustained
    assert kept.due


def test_a_short_run_of_anomalous_windows_is_not_learned() -> None:
    kept = reservoir(limit=20, lookback=10, share=0.5)
    kept.add_ordered(np.arange(20.0), np.zeros((20, 1)))
    flags = [False] * 5 + [True] * 3 + [False] * 11
    kept.judge(*windows(list(range(19)), flags, size=1.0))
    assert kept.rows()[0].tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    assert not kept.sustained


# --- the decision ----------------------------------------------------------------------------------------------


def decided(anomalous: int, production_anomalous: int, checks: dict[str, tuple[float, float]],
            route_bundle: Bundle) -> str | None:  # fmt: skip
    shadow = Shadow("s", route_bundle, Learned("s", "s", 2, "", checks), alerting=config_from_dict({}).alerting)
    shadow.windows, shadow.anomalous = 100, anomalous
    shadow.production(100, production_anomalous)
    return shadow_decision(shadow)


def test_a_candidate_no_worse_than_production_that_flags_the_synthetic_faults_production_flags_is_promoted(
    route_bundle: Bundle,
) -> None:
    assert decided(2, 60, {"a": (1.0, 1.0), "b": (0.1, 0.9)}, route_bundle) is None
    assert decided(3, 3, {"a": (1.0, 0.8)}, route_bundle) is None  # as many false alerts: no worse


@pytest.mark.parametrize(
    ("anomalous", "checks", "reason"),
    [
        (5, {"a": (1.0, 1.0)}, "false-alert share 0.0500 is worse than production's 0.0400"),
        (1, {"a": (1.0, 0.2), "b": (0.0, 1.0)}, "misses the synthetic fault on a that production flags"),
        (1, {"a": (0.0, 0.1)}, "flags none of the synthetic faults"),
    ],
)
def test_a_candidate_worse_than_production_or_blind_to_a_synthetic_fault_is_discarded_with_the_reason(
    anomalous: int, checks: dict[str, tuple[float, float]], reason: str, route_bundle: Bundle
) -> None:
    assert reason in (decided(anomalous, 4, checks, route_bundle) or "")


def test_a_candidate_in_shadow_counts_its_alerts_and_sends_none(route_bundle: Bundle) -> None:
    # The route's bundle, at this pump's operating point, flags every window: a candidate that would alert.
    shadow = Shadow(STREAM, route_bundle, Learned(STREAM, STREAM, 2, ""), alerting=config_from_dict({}).alerting)
    for i in range(0, 400, 100):
        shadow.feed([rows(STREAM, other_pump(100, seed=5 + i), i), rows("another", other_pump(100, seed=6), i)])
    assert shadow.windows == 400 - WINDOW + 1  # its stream's windows only
    assert shadow.anomalous > 0.9 * shadow.windows
    assert shadow.alerts == 1


# --- the cycle, in memory --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shifted(route_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Serving:
    """A stream learned at one operating point that then moves to another: it alerts, retrains, and its candidate
    scores in shadow and is decided."""
    root = tmp_path_factory.mktemp("retrain-registry")
    serving = Serving(route_bundle, root, learning=LearningConfig(retrain=RETRAIN))
    serving.feed([rows(STREAM, other_pump(PROBATION, seed=61), 0)])
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    new_level = shifted_pump(2800, seed=62)
    serving.feed([rows(STREAM, new_level[:2400], PROBATION)])
    serving.wait_until(lambda: serving.learner._streams[STREAM].shadow is not None, timeout_s=300)
    assert serving.learner.counts()["retraining"] == 1
    serving.feed([rows(STREAM, new_level[2400:], PROBATION + 2400)])
    return serving


def test_a_stream_at_a_new_operating_point_retrains_and_its_candidate_is_promoted_after_its_shadow_period(
    shifted: Serving,
) -> None:
    serving = shifted
    registry = Registry(serving.learner._streams[STREAM].route.route.learned_registry or "")
    version = registry.resolve(STREAM, "production")
    assert version.number == 2, version.provenance["metrics"]
    assert version.provenance["parent"] == 1
    metrics = version.provenance["metrics"]
    assert metrics["shadow_decision"] == "promoted"
    assert metrics["shadow_false_alert_share"] <= metrics["production_false_alert_share"]
    assert metrics["samples"] == RETRAIN.reservoir_samples - RETRAIN.holdback_samples
    assert serving.sample("ae_monitor_learning_retrainings_total", outcome="promoted") == 1
    assert serving.learner.counts() == {"learning": 0, "scoring": 1, "retraining": 0}
    assert serving.engine.bundles[f"own:{STREAM}"].version == load_bundle(version.bundle_path).version


def test_after_the_promotion_the_new_level_does_not_alert_and_a_fault_still_does(shifted: Serving) -> None:
    serving = shifted
    first = PROBATION + 2800
    before = len(serving.alerts)
    fault = Fault("vibration_rms", 600, 900, "decouple")
    serving.feed([rows(STREAM, shifted_pump(1000, seed=64, fault=fault), first)])
    firing = [a for a in serving.alerts[before:] if a.status == "firing"]
    assert firing, "the fault raised no alert"
    assert all(a.event_time_s >= START_S + first + 600 - WINDOW + 1 for a in firing), firing


def test_no_alert_episode_is_dropped_or_duplicated_across_the_promotion(shifted: Serving) -> None:
    events: dict[str, list[str]] = {}
    for alert in shifted.alerts:
        events.setdefault(alert.id, []).append(alert.status)
    assert all(statuses in (["firing"], ["firing", "resolved"]) for statuses in events.values()), events
    # The episode the shift opened under version 1 is resolved (by version 2's windows), not left open.
    assert events[shifted.alerts[0].id] == ["firing", "resolved"]


def test_a_promoted_model_is_rolled_back_by_moving_production_back_and_the_stream_follows(shifted: Serving) -> None:
    serving = shifted
    registry = Registry(serving.learner._streams[STREAM].route.route.learned_registry or "")
    registry.rollback(STREAM, "production", reason="test")
    serving.learner._watched_at = -1e9  # the next poll reads the aliases (service.reload_check_s elapsed)
    serving.learner.poll()
    assert serving.learner._streams[STREAM].version == 1
    registry.promote(STREAM, 2, "production")
    serving.learner._watched_at = -1e9
    serving.learner.poll()
    assert serving.learner._streams[STREAM].version == 2


def test_a_candidate_that_alerts_more_than_production_is_discarded_and_its_alerts_are_never_sent(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    def the_route_bundle(job: LearnJob) -> Learned:
        # A candidate that flags this pump's every window: the route's bundle, registered as the next version.
        if job.parent is None:
            return StreamTrainer()(job)
        registry = Registry(job.registry_root)
        version = registry.register(job.model, sensor_bundle, parent=job.parent)
        return Learned(job.stream, job.model, version.number, str(version.bundle_path), {"current_a": (1.0, 1.0)})

    serving = Serving(route_bundle, tmp_path, trainer=the_route_bundle, learning=LearningConfig(retrain=RETRAIN))
    serving.feed([rows(STREAM, other_pump(PROBATION, seed=61), 0)])
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    serving.feed([rows(STREAM, shifted_pump(2400, seed=62), PROBATION)])
    serving.wait_until(lambda: serving.learner._streams[STREAM].shadow is not None, timeout_s=300)
    before = len(serving.alerts)  # the route's bundle alerted while the stream learned, as it should
    serving.feed([rows(STREAM, other_pump(400, seed=63), PROBATION + 2400)])
    assert serving.sample("ae_monitor_learning_retrainings_total", outcome="discarded") == 1
    assert serving.sample("ae_monitor_shadow_alerts_total", model=STREAM) >= 1
    assert all(a.bundle_version != route_bundle.version for a in serving.alerts[before:])
    registry = Registry(tmp_path)
    assert registry.resolve(STREAM, "production").number == 1
    decision = registry.version(STREAM, 2).provenance["metrics"]["shadow_decision"]
    assert decision.startswith("discarded: its shadow false-alert share"), decision


def test_a_reservoir_too_short_to_train_a_candidate_is_refused_at_startup(route_bundle: Bundle,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    route = RouteConfig(bundle_path="pump", learn="per_stream", learned_registry=str(tmp_path))
    config = config_from_dict({"learning": {"retrain": {"enabled": True, "reservoir_samples": 100,
                                                        "holdback_samples": 50}}})  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"learning\.retrain\.reservoir_samples: reservoir_samples - holdback_samples"
    ):
        learn_routes(config, [(route, "pump")], {"pump": route_bundle}, StreamTrainer())


def test_a_reservoir_too_short_for_the_calibration_method_is_refused_at_startup_not_at_each_retraining(
    route_bundle: Bundle, tmp_path: Path
) -> None:
    # The route bundle calibrates with peaks-over-threshold (initial quantile 0.95: 182 window scores); 800 rows
    # train a network but leave its calibration about 90 held-out windows, which failed every retraining in serve.
    assert route_bundle.calibration is not None
    assert route_bundle.calibration.method == "pot"
    route = RouteConfig(bundle_path="pump", learn="per_stream", learned_registry=str(tmp_path))
    config = config_from_dict({"learning": {"retrain": {"enabled": True, "reservoir_samples": 1000,
                                                        "holdback_samples": 200}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"learning\.retrain\.reservoir_samples: .* 182 needed"):
        learn_routes(config, [(route, "pump")], {"pump": route_bundle}, StreamTrainer())


def test_a_candidate_whose_production_was_moved_by_hand_while_it_trained_is_discarded(
    route_bundle: Bundle, sensor_bundle: Path, tmp_path: Path
) -> None:
    release = threading.Event()

    def slow(job: LearnJob) -> Learned:
        if job.parent is not None:
            release.wait(60)
        return StreamTrainer()(job)

    serving = Serving(route_bundle, tmp_path, trainer=slow, learning=LearningConfig(retrain=RETRAIN))
    serving.feed([rows(STREAM, other_pump(PROBATION, seed=61), 0)])
    serving.wait_until(lambda: serving.learner.counts()["scoring"] == 1)
    serving.feed([rows(STREAM, shifted_pump(2400, seed=62), PROBATION)])
    assert serving.learner.counts()["retraining"] == 1
    registry = Registry(tmp_path)
    registry.promote(STREAM, registry.register(STREAM, sensor_bundle).number, "production", reason="by hand")
    serving.learner._watched_at = -1e9
    serving.learner.poll()
    assert serving.learner._streams[STREAM].version == 2
    release.set()
    serving.wait_until(lambda: serving.sample("ae_monitor_learning_retrainings_total", outcome="discarded") == 1)
    assert registry.resolve(STREAM, "production").number == 2
    decision = registry.version(STREAM, 3).provenance["metrics"]["shadow_decision"]
    assert decision == "discarded: production was moved by hand while it trained"
    assert serving.learner.counts()["scoring"] == 1
