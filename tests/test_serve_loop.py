"""The serve loop's own decisions, driven step by step with an in-memory source (the Kafka paths: test_serve.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig, KafkaSourceConfig, ScoringConfig, ServiceConfig
from ae_monitor.engine import Engine
from ae_monitor.health import Health, SystemdNotifier
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle, save_bundle
from ae_monitor.records import Alert, DeadLetter
from ae_monitor.registry import AliasRef, Registry, bundle_location
from ae_monitor.serve.loop import Daemon
from ae_monitor.serve.outputs import Outputs, QueueSink
from ae_monitor.sinks.delivery import DeliveryQueue
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.kafka import Partition, Polled, RebalanceEvent


class IdleSource:
    """What the loop asks of a Kafka source, with nothing to consume."""

    stalled = False
    connected = True
    last_commit_s = None

    def poll(self, *, timeout_ms: int) -> Polled:
        return Polled.empty()

    def take_rebalance_events(self) -> list[RebalanceEvent]:
        return []

    def assignment(self) -> frozenset[Partition]:
        return frozenset({("t", 0)})

    def commit(self, offsets: dict[Partition, int], *, wait: bool = False) -> None:
        pass

    def lag(self) -> dict[Partition, int]:
        return {}

    def uncommitted(self) -> dict[Partition, int]:
        return {}

    def recover(self) -> None:
        pass

    def close(self) -> None:
        pass


def _daemon(served: Path | AliasRef, clock: list[float]) -> tuple[Daemon, Engine]:
    metrics = Metrics(CollectorRegistry())
    engine = Engine({"pump": load_bundle(bundle_location(served))}, alerting=AlertingConfig(), metrics=metrics)
    queue = DeliveryQueue({"memory": MemorySink[Alert]()}, max_pending=100)
    outputs = Outputs(alerts=QueueSink(queue), dead_letters=MemorySink[DeadLetter]())
    daemon = Daemon(source_cfg=KafkaSourceConfig(topics=("t",)), scoring=ScoringConfig(),
                    service=ServiceConfig(reload_check_s=0.0, watchdog=False), source=IdleSource(),  # type: ignore[arg-type]
                    engine=engine, outputs=outputs, queue=queue, metrics=metrics,
                    health=Health(stale_after_s=30), notifier=SystemdNotifier({}), bundle_paths={"pump": served},
                    clock=lambda: clock[0])  # fmt: skip
    return daemon, engine


def test_a_recalibrated_bundle_with_the_same_weights_is_swapped_in(sensor_bundle: Path, tmp_path: Path) -> None:
    served = Path(shutil.copytree(sensor_bundle, tmp_path / "served"))
    clock = [1000.0]
    daemon, engine = _daemon(served, clock)
    old = engine.bundles["pump"]
    assert old.calibration is not None
    save_bundle(old.with_calibration(dataclasses.replace(old.calibration, threshold=old.threshold * 2)), served)
    clock[0] += 5.0  # past the housekeeping interval
    daemon.step()
    assert engine.bundles["pump"].threshold == old.threshold * 2
    assert engine.bundles["pump"].version == old.version  # same weights


def test_a_route_by_registry_alias_follows_promotions_and_rollbacks(sensor_bundle: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    registry.register("pump", sensor_bundle)
    original = load_bundle(sensor_bundle)
    assert original.calibration is not None
    doubled = original.with_calibration(dataclasses.replace(original.calibration, threshold=original.threshold * 2))
    registry.register("pump", save_bundle(doubled, tmp_path / "doubled"), parent=1)
    registry.promote("pump", 1, "production")
    clock = [1000.0]
    daemon, engine = _daemon(AliasRef(str(tmp_path / "models"), "pump", "production"), clock)

    registry.promote("pump", 2, "production")
    clock[0] += 5.0
    daemon.step()
    assert engine.bundles["pump"].threshold == original.threshold * 2

    registry.rollback("pump", "production")
    clock[0] += 5.0
    daemon.step()
    assert engine.bundles["pump"].threshold == original.threshold
