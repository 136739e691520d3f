"""Process lifecycle around the pipeline: the /metrics server, sinks opened from config, clean shutdown.

`serve` builds the daemon (ae_monitor.daemon) from config; `replay` and `demo` run the same pipeline over files.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

from ae_monitor.config import Config, MetricsConfig
from ae_monitor.errors import ConfigError
from ae_monitor.sinks import AlertSink, DeadLetterSink

if TYPE_CHECKING:
    from ae_monitor.daemon import Outputs
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle
from ae_monitor.pipeline import Pipeline, routing_fields
from ae_monitor.records import DeadLetter
from ae_monitor.sinks.jsonl import JsonlSink
from ae_monitor.sources.base import Source
from ae_monitor.sources.replay import ReplaySource
from ae_monitor.sources.stdin import JsonLinesSource

log = logging.getLogger(__name__)


@contextmanager
def metrics_server(cfg: MetricsConfig, registry: CollectorRegistry) -> Iterator[int | None]:
    """Serve /metrics while the block runs; yields the bound port (None when disabled)."""
    if not cfg.enabled:
        yield None
        return
    server, thread = start_http_server(cfg.port, addr=cfg.host, registry=registry)
    port = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", cfg.host, port)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def replay(config: Config, bundle_path: Path, inputs: Sequence[str | Path]) -> int:
    """Stream `inputs` (files, or `-` for JSON lines on stdin) through the pipeline with the bundle; alerts go to
    `replay.alerts_path`, dead letters to `replay.dead_letters_path` (stderr when unset). Returns windows scored."""
    bundle = load_bundle(bundle_path, expected_features=config.features)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    alerts = JsonlSink.open(config.replay.alerts_path)
    path = config.replay.dead_letters_path
    dead = JsonlSink.open(path) if path else JsonlSink(sys.stderr)
    source = _replay_source(config, inputs, dead, metrics)
    pipeline = Pipeline(bundle, alerting=config.alerting, alerts=alerts, dead_letters=dead, metrics=metrics,
                        drift=config.drift, online=config.calibration,
                        max_gap_s=config.replay.max_gap_s, batch_size=config.scoring.batch_size)  # fmt: skip
    try:
        with metrics_server(config.metrics, registry):
            windows = pipeline.run(source)
    finally:
        alerts.close()
        dead.close()
    log.info("replay done: %d windows scored over %d streams", windows, len(pipeline.streams))
    return windows


def _replay_source(config: Config, inputs: Sequence[str | Path], dead: JsonlSink, metrics: Metrics) -> Source:
    if [str(i) for i in inputs] != ["-"]:
        return ReplaySource(inputs, config.features, chunk_samples=config.replay.chunk_samples,
                            pacing=config.replay.pacing, speed=config.replay.speed)  # fmt: skip

    def dead_letter(letter: DeadLetter) -> None:
        dead.send([letter])
        metrics.dead_letters.labels(letter.reason).inc()

    return JsonLinesSource(sys.stdin, on_dead_letter=dead_letter)


def demo(out: Path, *, duration_s: float, metrics_port: int) -> int:
    """Run the embedded demo; exit status 0 when every injected fault was detected."""
    from ae_monitor.jobs.demo import run_demo

    registry = CollectorRegistry()
    with metrics_server(MetricsConfig(port=metrics_port), registry):
        result = run_demo(out, duration_s=duration_s, alerts=JsonlSink.open("-"), registry=registry)
    for stream, found in result.detected.items():
        log.info("%s: injected fault %s", stream, "DETECTED" if found else "MISSED")
    log.info("%d windows scored, %d alert events, %d false alarms", result.windows, result.alerts, result.false_alarms)
    return 0 if all(result.detected.values()) else 1


def serve(config: Config, *, registry: CollectorRegistry | None = None, stop: threading.Event | None = None) -> int:
    """`ae-monitor serve`: run the daemon until SIGTERM/SIGINT (or `stop`), reloading bundles on SIGHUP."""
    from ae_monitor.daemon import Daemon, QueueSink, load_routed_bundles
    from ae_monitor.health import Health, HealthServer, SystemdNotifier
    from ae_monitor.sources.kafka import KafkaSource, connect, consumer_factory

    if config.source is None:
        raise ConfigError("serve needs a [source] table (topics or topic_pattern)", key="source")
    torch.set_num_threads(config.scoring.torch_threads)
    bundles, routes, paths = load_routed_bundles(config)
    if registry is None:  # an injected registry is the caller's to fill
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    metrics = Metrics(registry)
    metrics.start_at_zero()
    health = Health(stale_after_s=config.service.heartbeat_stale_s)
    server = HealthServer(config.service.http_host, config.service.http_port, registry=registry, health=health).start()
    log.info("serving /metrics /healthz /readyz on http://%s:%d", config.service.http_host, server.port)
    stop = stop or threading.Event()
    outputs = build_outputs(config, metrics)
    try:
        states = load_alert_states(config)
        queue = outputs.alerts
        pipeline = Pipeline(bundles, alerting=config.alerting, alerts=QueueSink(queue),
                            dead_letters=outputs.dead_letters, metrics=metrics, routes=routes,
                            streams=config.streams, drift=config.drift, online=config.calibration,
                            codes=outputs.codes, cleaned=outputs.cleaned,
                            max_gap_s=config.replay.max_gap_s,
                            batch_size=config.scoring.batch_size)  # fmt: skip
        pipeline.restore_alert_states(states)
        factory = consumer_factory(config.kafka, config.source)
        source = KafkaSource(lambda: connect(factory, timeout_s=config.kafka.connect_timeout_s), config.source,
                             stall_after_s=config.source.rebalance_stall_s,
                             tags=routing_fields([route for route, _ in routes]))  # fmt: skip
        daemon = Daemon(config, source=source, pipeline=pipeline, outputs=outputs, metrics=metrics, health=health,
                        notifier=SystemdNotifier(), bundle_paths=paths)  # fmt: skip
        _install_signals(stop, daemon.reload_requested)
        # Everything loaded so far (torch, numpy, the bundles) lives as long as the process: moved out of the
        # collector's sight, the full collections the main loop's garbage triggers no longer walk it. Measured
        # by scripts/bench_serve.py: about a quarter more records per second.
        gc.freeze()
        daemon.run(stop)
    finally:
        server.stop()
    return 0


def _install_signals(stop: threading.Event, reload: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (tests run serve in a thread)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())


def load_alert_states(config: Config) -> dict[str, dict[str, Any]]:
    """Create the output topics that are missing, then read back the per-stream alert state."""
    cfg = config.sinks.kafka
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
    ensure_topics(admin_factory(config.kafka), topics)
    if cfg.state_topic is None:
        return {}
    states = load_state(state_consumer_factory(config.kafka), cfg.state_topic)
    log.info("restored the alert state of %d streams from %s", len(states), cfg.state_topic)
    return states


def build_outputs(config: Config, metrics: Metrics) -> Outputs:
    """The alert delivery queue and the dead-letter, scores and state outputs named by `[sinks]`."""
    from ae_monitor.daemon import Outputs
    from ae_monitor.sinks.delivery import DeliveryQueue

    sinks: dict[str, AlertSink] = {}
    closers: list[Callable[[], None]] = []
    cfg = config.sinks
    kafka = _kafka_outputs(config, sinks, closers)
    if cfg.jsonl_path is not None:
        jsonl = JsonlSink.open(cfg.jsonl_path)
        sinks["jsonl"] = jsonl
        closers.append(jsonl.close)
    _http_sinks(config, sinks, closers)
    if not sinks:
        raise ConfigError("no alert sink configured: set sinks.kafka.alerts_topic, jsonl_path, alertmanager.url "
                          "or webhook.url", key="sinks")  # fmt: skip
    queue = DeliveryQueue(sinks, max_pending=cfg.max_pending_alerts, metrics=metrics)
    # Without a dead-letter topic, unusable records are written to stderr as JSON lines: never dropped silently.
    dead: DeadLetterSink = kafka.get("dead") or JsonlSink(sys.stderr)
    return Outputs(alerts=queue, dead_letters=dead, scores=kafka.get("scores"), codes=kafka.get("codes"),
                   cleaned=kafka.get("cleaned"),
                   state=kafka.get("state"),
                   closers=closers)  # fmt: skip


def _kafka_outputs(config: Config, sinks: dict[str, AlertSink], closers: list[Callable[[], None]]) -> dict[str, Any]:
    cfg = config.sinks.kafka
    if not any(
        (cfg.alerts_topic, cfg.scores_topic, cfg.codes_topic, cfg.cleaned_topic, cfg.dead_letter_topic, cfg.state_topic)
    ):
        return {}
    from ae_monitor.sinks import kafka as ks

    producer = ks.producer_factory(config.kafka, send_timeout_s=cfg.send_timeout_s)()
    closers.append(producer.close)
    found: dict[str, Any] = {}
    if cfg.alerts_topic:
        sinks["kafka"] = ks.KafkaAlertSink(producer, cfg.alerts_topic, timeout_s=cfg.send_timeout_s)
    if cfg.scores_topic:
        found["scores"] = ks.KafkaScoresSink(producer, cfg.scores_topic, timeout_s=cfg.send_timeout_s).send
    if cfg.codes_topic:
        found["codes"] = ks.KafkaCodesSink(producer, cfg.codes_topic, timeout_s=cfg.send_timeout_s).send
    if cfg.cleaned_topic:
        found["cleaned"] = ks.KafkaCleanedSink(producer, cfg.cleaned_topic, timeout_s=cfg.send_timeout_s).send
    if cfg.dead_letter_topic:
        found["dead"] = ks.KafkaDeadLetterSink(producer, cfg.dead_letter_topic, timeout_s=cfg.send_timeout_s,
                                               pipelined=True)  # fmt: skip
    if cfg.state_topic:
        found["state"] = ks.KafkaStateStore(producer, cfg.state_topic, timeout_s=cfg.send_timeout_s)
    return found


def _http_sinks(config: Config, sinks: dict[str, AlertSink], closers: list[Callable[[], None]]) -> None:
    cfg = config.sinks
    if cfg.alertmanager.url is None and cfg.webhook.url is None:
        return
    import httpx

    from ae_monitor.sinks.alertmanager import AlertmanagerSink
    from ae_monitor.sinks.webhook import WebhookSink

    client = httpx.Client()
    closers.append(client.close)
    if cfg.alertmanager.url is not None:
        sinks["alertmanager"] = AlertmanagerSink.from_config(cfg.alertmanager, client)
    if cfg.webhook.url is not None:
        sinks["webhook"] = WebhookSink.from_config(cfg.webhook, client)
