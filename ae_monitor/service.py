"""Process lifecycle around the pipeline: the /metrics server, sinks opened from config, clean shutdown.

(The Kafka daemon, `serve`, will live here too; for now replay and the demo are the streaming entry points.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from ae_monitor.config import Config, MetricsConfig
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle
from ae_monitor.pipeline import Pipeline
from ae_monitor.records import DeadLetter
from ae_monitor.sinks.jsonl import JsonlSink
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.replay import ReplaySource

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
    """Stream `inputs` through the pipeline with the bundle, alerts to `replay.alerts_path`. Returns windows scored."""
    bundle = load_bundle(bundle_path, expected_features=config.features)
    registry = CollectorRegistry()
    alerts = JsonlSink.open(config.replay.alerts_path)
    dead: JsonlSink | MemorySink[DeadLetter] = (
        JsonlSink.open(config.replay.dead_letters_path) if config.replay.dead_letters_path else MemorySink()
    )
    source = ReplaySource(inputs, config.features, chunk_samples=config.replay.chunk_samples,
                          pacing=config.replay.pacing, speed=config.replay.speed)  # fmt: skip
    pipeline = Pipeline(bundle, alerting=config.alerting, alerts=alerts, dead_letters=dead, metrics=Metrics(registry),
                        max_gap_s=config.replay.max_gap_s, batch_size=config.scoring.batch_size)  # fmt: skip
    try:
        with metrics_server(config.metrics, registry):
            windows = pipeline.run(source)
    finally:
        alerts.close()
        if isinstance(dead, JsonlSink):
            dead.close()
    log.info("replay done: %d windows scored over %d streams", windows, len(pipeline.streams))
    return windows


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
