"""`ae-monitor serve`: wiring the daemon from config — bundles, outputs, engine, Kafka source — then running it.

Each part gets the config sections it needs, once, here. Startup stops before consuming anything when a bundle,
the config or an output is unusable, with a message naming it.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from ae_monitor.config import Config, KafkaConnectionConfig, KafkaSinkConfig, RouteConfig
from ae_monitor.engine import Engine, routing_fields
from ae_monitor.engine.routing import UNSCORED
from ae_monitor.errors import AeMonitorError, ConfigError
from ae_monitor.health import Health, HealthServer, SystemdNotifier
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.registry import AliasRef
from ae_monitor.serve.learning import Learner, LearnRoute, Trainer, learn_routes, trainer_executor
from ae_monitor.serve.loop import Daemon
from ae_monitor.serve.outputs import build_outputs

log = logging.getLogger(__name__)

YOUNG_GC_ALLOCATIONS = 50_000  # net container allocations between young collections (Python's default: 700)


def serve(config: Config, *, registry: CollectorRegistry | None = None, stop: threading.Event | None = None,
          trainer: Trainer | None = None) -> int:  # fmt: skip
    """Run the daemon until SIGTERM/SIGINT (or `stop`), reloading bundles on SIGHUP. `trainer` learns the streams
    of `learn = "per_stream"` routes (jobs.learn.StreamTrainer; the CLI passes it)."""
    from ae_monitor.sources.kafka import KafkaSource, consumer_factory

    if config.source is None:
        raise ConfigError("serve needs a [source] table (topics or topic_pattern)", key="source")
    # Handlers first: a SIGTERM or SIGINT while startup waits for the brokers raises StartupInterrupted.
    stop, reload, starting = stop or threading.Event(), threading.Event(), threading.Event()
    starting.set()
    _install_signals(stop, reload, starting)
    if config.scoring.backend == "torch":  # with "onnx" torch is never imported (docs/footprint.md)
        import torch

        torch.set_num_threads(config.scoring.torch_threads)
    bundles, routes, paths = load_routed_bundles(config)
    learning = _learning_routes(config, routes, bundles, trainer)
    if registry is None:  # an injected registry is the caller's to fill
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    metrics = Metrics(registry)
    metrics.start_at_zero()
    health = Health(stale_after_s=config.service.heartbeat_stale_s)
    server = HealthServer(config.service.http_host, config.service.http_port, registry=registry, health=health).start()
    log.info("serving /metrics /healthz /readyz on http://%s:%d", config.service.http_host, server.port)
    here = f"http://{socket.getfqdn() if config.service.http_host in ('0.0.0.0', '::') else config.service.http_host}"
    outputs, queue = build_outputs(config.sinks, config.kafka, metrics, generator_url=f"{here}:{server.port}/metrics")
    try:
        states = load_alert_states(config.sinks.kafka, config.kafka)
        engine = Engine(bundles, alerting=config.alerting, metrics=metrics, routes=routes, streams=config.streams,
                        drift=config.drift, online=config.calibration, codes=outputs.codes is not None,
                        cleaned=outputs.cleaned is not None, max_gap_s=config.replay.max_gap_s,
                        batch_size=config.scoring.batch_size,
                        group_models=config.scoring.group_models)  # fmt: skip
        engine.restore_alert_states(states)
        learner = None
        if learning is not None and trainer is not None:
            learner = Learner(learning, engine=engine, trainer=trainer,
                              executor=lambda: trainer_executor(config.learning), cfg=config.learning,
                              metrics=metrics, alerting=config.alerting, backend=config.scoring.backend,
                              threads=config.scoring.torch_threads, watch_every_s=config.service.reload_check_s,
                              idle_after_s=config.streams.idle_eviction_s)  # fmt: skip
            health.describe("learning", learner.counts)
        source = KafkaSource(consumer_factory(config.kafka, config.source), config.source,
                             stall_after_s=config.source.rebalance_stall_s,
                             tags=routing_fields([route for route, _ in routes]))  # fmt: skip
        daemon = Daemon(source_cfg=config.source, scoring=config.scoring, service=config.service, source=source,
                        engine=engine, outputs=outputs, queue=queue, metrics=metrics, health=health,
                        notifier=SystemdNotifier(), bundle_paths=paths,
                        load_states=_state_reader(config.sinks.kafka, config.kafka),
                        reload_requested=reload, learner=learner)  # fmt: skip
        # Everything loaded so far (torch or onnxruntime, numpy, the bundles) lives as long as the process: moved out
        # of the collector's sight, the full collections the main loop's garbage triggers no longer walk it. Measured
        # by scripts/bench_serve.py: about a quarter more records per second.
        gc.freeze()
        # A micro-batch allocates tens of thousands of containers that die with it (the client's records, decoded
        # rows). Collected every 700 allocations (the default), objects of the batch in flight were promoted to the
        # old generations, whose full collections then paused the loop for 20-95 ms several times a minute
        # (scripts/bench_serve.py --trace); every YOUNG_GC_ALLOCATIONS, a batch mostly dies young.
        gc.set_threshold(YOUNG_GC_ALLOCATIONS, *gc.get_threshold()[1:])
        starting.clear()  # from here a signal only sets `stop`: the loop drains, delivers and commits
        daemon.run(stop)
    finally:
        server.stop()
    return 0


def load_routed_bundles(
    config: Config,
) -> tuple[dict[str, Bundle], list[tuple[RouteConfig, str]], dict[str, Path | AliasRef]]:
    """Load and verify every bundle the routes name (a bad one stops startup, naming it). A route may name a
    registry alias (`registry://<root>/<model>@<alias>`): the version it names is loaded, and watched for moves."""
    routes: tuple[RouteConfig, ...] = config.routes
    if not routes:
        if config.replay.bundle_path is None:
            raise AeMonitorError("no bundle to serve: add a [[routes]] table with bundle_path (or replay.bundle_path)")
        routes = (RouteConfig(bundle_path=config.replay.bundle_path),)
    bundles: dict[str, Bundle] = {}
    paths: dict[str, Path | AliasRef] = {}
    pairs = []
    for route in routes:
        if route.bundle_path is None:  # a learning route: its streams wait unscored for their own models
            pairs.append((route, UNSCORED))
            continue
        alias = AliasRef.parse(route.bundle_path)
        path = Path(route.bundle_path) if alias is None else alias.resolve()
        key = str(path.resolve()) if alias is None else str(alias)
        if key not in bundles:
            bundles[key] = load_bundle(path, backend=config.scoring.backend, threads=config.scoring.torch_threads)
            paths[key] = path if alias is None else alias
        pairs.append((route, key))
    return bundles, pairs, paths


def _learning_routes(config: Config, routes: list[tuple[RouteConfig, str]], bundles: dict[str, Bundle],
                     trainer: Trainer | None) -> list[tuple[RouteConfig, LearnRoute | None]] | None:  # fmt: skip
    """The routes' learning settings, checked before anything is consumed; None when no route learns."""
    if all(route.learn == "none" for route, _ in routes):
        return None
    if trainer is None:
        raise ConfigError("a route learns per stream but this serve has no trainer (run `ae-monitor serve`)",
                          key="routes")  # fmt: skip
    return learn_routes(config, routes, bundles, trainer)


def load_alert_states(cfg: KafkaSinkConfig, kafka: KafkaConnectionConfig) -> dict[str, dict[str, Any]]:
    """Create the output topics that are missing, then read back the per-stream alert state."""
    named = (cfg.alerts_topic, cfg.scores_topic, cfg.codes_topic, cfg.cleaned_topic, cfg.dead_letter_topic)
    topics = {t: {"num_partitions": 1, "replication_factor": 1} for t in named if t}
    if cfg.state_topic is not None:
        from ae_monitor.sinks.kafka import compacted

        topics[cfg.state_topic] = compacted()
    if not topics:
        return {}
    from ae_monitor.sinks.kafka import admin_factory, ensure_topics, load_state, state_consumer_factory

    # Created up front: topics auto-created while the consumer runs change the cluster metadata, which made
    # kafka-python 3.0.12 rebalance the group (and once stall after it).
    ensure_topics(admin_factory(kafka), topics)
    if cfg.state_topic is None:
        return {}
    states = load_state(state_consumer_factory(kafka), cfg.state_topic)
    log.info("restored the alert state of %d streams from %s", len(states), cfg.state_topic)
    return states


def _state_reader(cfg: KafkaSinkConfig, kafka: KafkaConnectionConfig) -> Callable[[], dict[str, dict[str, Any]]] | None:
    """Reads the whole alert-state topic (when there is one): on every partition assignment."""
    if cfg.state_topic is None:
        return None
    from ae_monitor.sinks.kafka import load_state, state_consumer_factory

    topic, factory = cfg.state_topic, state_consumer_factory(kafka)
    return lambda: load_state(factory, topic)


class StartupInterrupted(BaseException):  # like KeyboardInterrupt: a request to stop, not an error
    """SIGTERM or SIGINT arrived before serve consumed anything. Raised from the signal handler, it interrupts a
    Kafka client that waits for a broker (kafka-python's constructors block for `kafka.connect_timeout_s`); a
    BaseException, so no `except Exception` on the way swallows it."""


def _install_signals(stop: threading.Event, reload: threading.Event, starting: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (tests run serve in a thread)

    def on_stop(signum: int, _frame: object) -> None:
        stop.set()
        if starting.is_set():
            starting.clear()  # once: a second signal while this one unwinds must not interrupt the unwinding
            raise StartupInterrupted(f"stopped by {signal.Signals(signum).name} while starting; nothing was consumed")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
