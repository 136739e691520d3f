"""The HTTP endpoints of the offline commands (replay, demo): /metrics, /healthz and /readyz, as `serve` has them."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from ae_monitor.config import MetricsConfig
from ae_monitor.errors import ConfigError
from ae_monitor.health import Health, HealthServer

log = logging.getLogger(__name__)

OFFLINE_CONDITIONS = ("bundles", "source")


def offline_health() -> Health:
    """Readiness for replay and the demo: a loaded bundle and an open source. Liveness needs no heartbeat: an
    offline run has no loop to stall while it trains or reads files."""
    return Health(stale_after_s=math.inf, conditions=OFFLINE_CONDITIONS)


@contextmanager
def metrics_server(
    cfg: MetricsConfig, registry: CollectorRegistry, *, health: Health | None = None
) -> Iterator[int | None]:
    """Serve /metrics, /healthz and /readyz while the block runs; yields the bound port (None when disabled).

    A port that cannot be bound (taken by another process) raises ConfigError naming it."""
    if not cfg.enabled:
        yield None
        return
    try:
        server = HealthServer(cfg.host, cfg.port, registry=registry, health=health or offline_health())
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {cfg.host}:{cfg.port}: {exc.strerror or exc}; pick another port "
            "(--metrics-port, 0 = any free port) or turn the endpoint off (--no-metrics, metrics.enabled = false)",
            key="metrics.port",
        ) from exc
    server.start()
    log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", cfg.host, server.port)
    try:
        yield server.port
    finally:
        server.stop()
