"""The /metrics endpoint of the offline commands (replay, demo); `serve` has its own health server (health.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, start_http_server

from ae_monitor.config import MetricsConfig

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
