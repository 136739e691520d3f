"""The demo and the offline HTTP endpoints: health and readiness answer as serve's do, the summary names every
pump's fault, and latency is measured on the clock the events carry."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
from prometheus_client import CollectorRegistry

from ae_monitor.cli import main
from ae_monitor.config import MetricsConfig
from ae_monitor.jobs.demo import FAULTS, DemoResult, run_demo, summary_lines
from ae_monitor.metrics import Metrics
from ae_monitor.records import Alert
from ae_monitor.serve.http import metrics_server, offline_health
from ae_monitor.serve.offline import mark_ready


def test_offline_endpoints_answer_health_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    metrics, health = Metrics(registry), offline_health()
    with metrics_server(MetricsConfig(port=0), registry, health=health) as port:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").text == "ok\n"
        waiting = httpx.get(f"{base}/readyz")
        assert (waiting.status_code, waiting.text) == (503, "bundles: waiting\nsource: waiting\n")
        mark_ready(health, metrics, True)
        ready = httpx.get(f"{base}/readyz")
        assert (ready.status_code, ready.text) == (200, "bundles: ok\nsource: ok\n")
        assert "ae_monitor_ready 1.0" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/nothing").status_code == 404


class _ReadinessProbe:
    """An alert sink that records the ready gauge each time alerts arrive (that is, while the demo streams)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry, self.ready_seen = registry, set[float | None]()

    def send(self, alerts: Sequence[Alert]) -> None:
        self.ready_seen.add(self.registry.get_sample_value("ae_monitor_ready"))


def test_the_demo_is_ready_while_it_streams_and_times_latency_on_the_pumps_clock(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    probe = _ReadinessProbe(registry)
    result = run_demo(tmp_path, duration_s=5, alerts=probe, registry=registry, sleep=lambda _: None, train_s=2000)
    assert result.alerts > 0
    assert probe.ready_seen == {1.0}
    assert registry.get_sample_value("ae_monitor_ready") == 0.0  # the replay has ended
    count = registry.get_sample_value("ae_monitor_event_to_alert_seconds_count")
    total = registry.get_sample_value("ae_monitor_event_to_alert_seconds_sum")
    assert count
    assert total is not None
    assert total / count < 3600  # the pumps' clock, not 2026-01-01 against the wall clock (months)


def test_the_summary_names_the_healthy_pump_and_each_fault() -> None:
    result = DemoResult(alerts=3, detected={"pump-2": True, "pump-3": False}, false_alarms=1, windows=2913,
                        false_alarms_by_pump={"pump-1": 1, "pump-2": 0, "pump-3": 0})  # fmt: skip
    assert summary_lines(result) == [
        "pump-1: healthy (no fault injected): 1 false alarm(s)",
        "pump-2: bearing wear (vibration_rms decouples from the load) from 500 s to 800 s: DETECTED, "
        "0 false alarm(s) outside it",
        "pump-3: sensor drift (pressure_bar reads low) from 250 s to 450 s: MISSED, 0 false alarm(s) outside it",
    ]
    assert list(FAULTS) == ["pump-1", "pump-2", "pump-3"]


class _Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, Any]]] = []

    def do_POST(self) -> None:
        self.bodies.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_replay_delivers_to_alertmanager_and_webhook_without_kafka(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    config = tmp_path / "replay.toml"
    config.write_text(f'[features]\nkind = "sensor"\n[features.sensor]\nwindow_samples = 30\nhop_samples = 1\n'
                      f'[metrics]\nport = 0\n[replay]\nalerts_path = "{tmp_path / "alerts.jsonl"}"\n'
                      f'[sinks.alertmanager]\nurl = "{url}"\n[sinks.webhook]\nurl = "{url}/hook"\n')  # fmt: skip
    try:
        args = ["-q", "replay", "--config", str(config), "--bundle", str(sensor_bundle), "--input",
                str(sensor_data[1] / "pump-2.csv")]  # fmt: skip
        assert main(args) == 0
    finally:
        server.shutdown()
        server.server_close()
    written = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert written
    hooked = [body for path, body in _Collector.bodies if path == "/hook"]
    assert hooked == written
    items = [item for path, body in _Collector.bodies if path == "/api/v2/alerts" for item in body]
    assert len(items) >= len(written)
    assert all(item["generatorURL"].startswith("http://127.0.0.1:") for item in items)
    assert all(item["generatorURL"].endswith("/metrics") for item in items)
