"""The ops kit against real services: a running `ae-monitor serve`, a real Prometheus scraping it with the rules of
deploy/prometheus, and a real Alertmanager with deploy/alertmanager/alertmanager.yml calling a local webhook.

One scenario runs once for the module (`scenario`): three synthetic pumps (two with injected faults) and two
undecodable records go through the daemon in two phases — up to the first alert (then it must be firing in
Alertmanager), then the rest (then it must be resolved). Faults a healthy run never shows are injected too, so that
every dashboard panel has something to show: the daemon's webhook receiver refuses its first delivery, a fourth
stream overflows `streams.max_streams` (an eviction), and a corrupted bundle is refused on reload. The tests read
what each service saw.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_tools import DEPLOY, Prometheus, alertmanager, free_port, http_get, http_json, prometheus, tool, wait_for

from ae_monitor.config import Config, config_from_dict, dump_config
from ae_monitor.engine import Engine
from ae_monitor.jobs.demo import DEMO_CONFIG
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import WEIGHTS, load_bundle
from ae_monitor.records import Alert, DeadLetter
from ae_monitor.serve.offline import Runner
from ae_monitor.serve.outputs import Outputs
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.decode import decode_message
from ae_monitor.sources.files import read_sensor_csv

pytestmark = pytest.mark.ops

SITE = "plant-3"
DAEMON_WEBHOOK = "ae-monitor-sink"  # the daemon's own webhook sink posts here (refused once)
BAD_RECORDS = [(b"pump-9", b"{not json"), (b"pump-9", b'{"ts": 1, "values": {}}')]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ae-monitor.json"
# Grafana's built-in variables, as Grafana would expand them for a 1 s scrape interval and the last hour.
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

Message = tuple[bytes, bytes]


class Webhook:
    """A local webhook receiver: records (path, JSON body) of every POST; the path names the receiver.

    The first POST to a path in `refuse_first` is answered 503 (and not recorded): a receiver outage."""

    def __init__(self, *, refuse_first: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        calls, refused = self.calls, set(refuse_first)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.strip("/")
                if path in refused:
                    refused.discard(path)
                    self.send_response(503)
                    self.end_headers()
                    return
                calls.append((path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def notified(self, stream: str, status: str) -> list[str]:
        """Receivers that got a notification with an alert of `stream` in `status`."""
        return [path for path, body in self.calls if "alerts" in body
                for a in body["alerts"] if a["labels"].get("stream") == stream and a["status"] == status]  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def alertmanager_config_for_test(webhook_url: str) -> str:
    """deploy/alertmanager/alertmanager.yml with every receiver's webhook pointed at `webhook_url/<receiver>` and
    the grouping delays cut to 1 s. The routing tree and the inhibition rules are used unchanged."""
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook_url}/{receiver['name']}"
    config["route"].update(group_wait="1s", group_interval="1s")
    return yaml.safe_dump(config)


def prometheus_config_for_test(daemon_port: int, tmp: Path) -> dict[str, Any]:
    """Scrape the daemon every second (job and site as in deploy/prometheus/prometheus.yml) and evaluate the
    deploy rules every second (a copy with the groups' interval cut from 15 s)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "ae-monitor-rules.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yml")],
        "scrape_configs": [{"job_name": "ae-monitor", "static_configs": [
            {"targets": [f"127.0.0.1:{daemon_port}"], "labels": {"site": SITE}}]}],
    }  # fmt: skip


def pump_messages(csv: Path, stream: str, config: Config) -> list[Message]:
    table = read_sensor_csv(csv, config.features.sensor)
    return [(stream.encode(), json.dumps({"ts": float(ts), "values": dict(zip(table.channels, map(float, row),
                                                                                strict=True))}).encode())
            for ts, row in zip(table.ts_s, table.values, strict=True)]  # fmt: skip


def offline_alerts(bundle: Path, messages: list[Message], config: Config) -> list[tuple[int, Alert]]:
    """(index of the message after which it was raised, alert) for every alert event: ids are deterministic."""
    from prometheus_client import CollectorRegistry

    sink: MemorySink[Alert] = MemorySink()
    metrics = Metrics(CollectorRegistry())
    engine = Engine(load_bundle(bundle), alerting=config.alerting, metrics=metrics, max_gap_s=config.replay.max_gap_s)
    runner = Runner(engine, Outputs(alerts=sink, dead_letters=MemorySink[DeadLetter]()), metrics)
    raised: list[tuple[int, Alert]] = []
    for index, (key, value) in enumerate(messages):
        before = len(sink.items)
        runner.process([decode_message(key, value, [])])
        raised.extend((index, alert) for alert in sink.items[before:])
    return raised


@dataclass
class Scenario:
    prometheus: Prometheus
    alertmanager_url: str
    daemon_url: str
    webhook: Webhook
    first: Alert  # the first firing alert
    active_when_firing: list[dict[str, Any]]  # Alertmanager's /api/v2/alerts after phase 1
    active_after_resolve: list[dict[str, Any]] = field(default_factory=list)
    expected_events: int = 0


@pytest.fixture(scope="module")
def scenario(
    kafka_bootstrap: str, sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka_fixture import connect

    tool("prometheus", "prometheus")
    tool("prometheus-alertmanager", "prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("live-stack")
    tag = uuid.uuid4().hex[:10]
    topic = f"ae-monitor-ops-{tag}"
    admin = connect(lambda: KafkaAdminClient(bootstrap_servers=kafka_bootstrap))
    admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}}, wait_for_metadata=True)
    webhook = Webhook(refuse_first=frozenset({DAEMON_WEBHOOK}))
    port = free_port()
    served = Path(shutil.copytree(sensor_bundle, tmp / "bundle"))
    try:
        with alertmanager(alertmanager_config_for_test(webhook.url), tmp) as am_url:
            config = config_from_dict({
                **DEMO_CONFIG,
                "kafka": {"bootstrap_servers": [kafka_bootstrap]},
                "source": {"topics": [topic], "group_id": f"g-{tag}", "start_from": "earliest",
                           "commit_interval_s": 0.2, "session_timeout_ms": 6000},
                "routes": [{"match": "*", "bundle_path": str(served)}],
                "streams": {"max_streams": 3},
                "sinks": {"kafka": {"alerts_topic": f"alerts-{tag}", "dead_letter_topic": f"dead-{tag}",
                                    "state_topic": f"state-{tag}"},
                          "alertmanager": {"url": am_url, "labels": {"site": SITE}},
                          "webhook": {"url": f"{webhook.url}/{DAEMON_WEBHOOK}", "max_retries": 0,
                                      "backoff_initial_s": 0.2}},
                "service": {"http_port": port, "log_format": "text", "shutdown_grace_s": 10, "reload_check_s": 0.2},
                "scoring": {"max_batch_delay_ms": 20},
                "drift": {"min_scores": 50},
            })  # fmt: skip
            (tmp / "serve.toml").write_text(dump_config(config))
            argv = [sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(tmp / "serve.toml")]
            with (tmp / "daemon.log").open("wb") as log:
                daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            try:
                with prometheus(prometheus_config_for_test(port, tmp), tmp) as prom:
                    yield run_scenario(config, served, sensor_data[1], topic,
                                       producer=connect(lambda: KafkaProducer(bootstrap_servers=kafka_bootstrap)),
                                       prom=prom, am_url=am_url, daemon=daemon, daemon_port=port, webhook=webhook,
                                       log=tmp / "daemon.log")  # fmt: skip
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(timeout=5)
    finally:
        webhook.close()
        admin.delete_topics([topic])
        admin.close()


def run_scenario(config: Config, bundle: Path, replay: Path, topic: str, *, producer: Any, prom: Prometheus,
                 am_url: str, daemon: subprocess.Popen[bytes], daemon_port: int, webhook: Webhook,
                 log: Path) -> Scenario:  # fmt: skip
    daemon_url = f"http://127.0.0.1:{daemon_port}"
    wait_for(lambda: daemon.poll() is not None or http_get(daemon_url + "/readyz")[0] == 200,
             timeout_s=60, what="the daemon's /readyz")  # fmt: skip
    assert daemon.poll() is None, log.read_text()
    wait_for(prom.targets_up, what="Prometheus scraping the daemon")

    streams = [pump_messages(replay / f"pump-{i}.csv", f"pump-{i}", config) for i in (1, 2, 3)]
    messages = [m for group in zip(*streams, strict=True) for m in group]
    raised = offline_alerts(bundle, messages, config)
    split, first = next((i, a) for i, a in raised if a.status == "firing")
    assert any(a.id == first.id and a.status == "resolved" and i > split for i, a in raised)

    def produce(batch: list[Message]) -> None:
        for key, value in batch:
            producer.send(topic, key=key, value=value)
        producer.flush()

    def active(stream: str) -> list[dict[str, Any]]:
        query = f'filter=alertname="AeMonitorAnomaly"&filter=stream="{stream}"'
        return list(http_json(f"{am_url}/api/v2/alerts?{query}"))

    # Phase 1: up to the first alert, plus two undecodable records.
    produce([*messages[: split + 1], *BAD_RECORDS])
    firing = wait_for(lambda: active(first.stream), what=f"Alertmanager to show the alert of {first.stream}")
    wait_for(lambda: webhook.notified(first.stream, "firing"), what="the firing notification")
    rule = f'ALERTS{{alertname="AeMonitorStreamAnomaly",alertstate="firing",stream="{first.stream}"}}'
    wait_for(lambda: prom.query(rule), what="Prometheus's own anomaly rule to fire")
    # Phase 2: the rest; every episode ends before the data does.
    produce(messages[split + 1 :])
    wait_for(lambda: webhook.notified(first.stream, "resolved"), what="the resolved notification")
    after = active(first.stream)
    # Phase 3: a fourth stream evicts the least recently seen one (max_streams = 3); a corrupted bundle is refused.
    produce([(b"pump-4", messages[0][1])])
    (bundle / WEIGHTS).write_bytes(b"corrupted")
    (bundle / "manifest.json").touch()
    for series in (
        'ae_monitor_streams_evicted_total{reason="capacity"}',
        'ae_monitor_bundle_reloads_total{result="failed"}',
        'ae_monitor_sink_failures_total{sink="webhook"}',
    ):
        wait_for(lambda: prom.query(f"increase({series}[1m])"), what=series)  # noqa: B023 (called at once)
    # Let Prometheus scrape the final counts and evaluate the rules over them.
    promql = 'sum(ae_monitor_alerts_total{job="ae-monitor"})'
    wait_for(lambda: [r for r in prom.query(promql) if float(r["value"][1]) == len(raised)],
             timeout_s=60, what=f"Prometheus to see all {len(raised)} alert events")  # fmt: skip
    rules = yaml.safe_load((DEPLOY / "prometheus" / "ae-monitor-rules.yml").read_text())["groups"]
    for record in [r["record"] for g in rules for r in g["rules"] if "record" in r]:
        wait_for(lambda: prom.query(record), what=f"the recording rule {record}")  # noqa: B023 (called at once)
    producer.close()
    return Scenario(prom, am_url, daemon_url, webhook, first, firing, after, len(raised))


# --- Alertmanager ---------------------------------------------------------------------------------------------


def test_the_daemons_alert_is_firing_in_alertmanager_with_the_sinks_labels(scenario: Scenario) -> None:
    [alert] = scenario.active_when_firing
    assert alert["status"]["state"] == "active"
    labels = alert["labels"]
    assert labels["site"] == SITE
    assert labels["bundle"] == scenario.first.bundle_name
    assert labels["severity"] in ("warning", "critical")
    assert alert["annotations"]["alert_id"] == scenario.first.id


def test_the_route_for_site_and_severity_is_called_for_firing_then_resolved(scenario: Scenario) -> None:
    severity = scenario.active_when_firing[0]["labels"]["severity"]
    receiver = "plant-3-oncall" if severity == "critical" else "plant-3-maintenance"
    assert set(scenario.webhook.notified(scenario.first.stream, "firing")) == {receiver}
    assert set(scenario.webhook.notified(scenario.first.stream, "resolved")) == {receiver}


def test_a_resolved_alert_is_no_longer_active_in_alertmanager(scenario: Scenario) -> None:
    assert scenario.active_after_resolve == []


def test_per_stream_alerts_are_inhibited_while_the_sites_daemon_is_down(scenario: Scenario) -> None:
    def alert(**labels: str) -> dict[str, Any]:
        return {"labels": labels, "annotations": {"summary": "posted by the test"}}

    http_json(f"{scenario.alertmanager_url}/api/v2/alerts", [
        alert(alertname="AeMonitorDown", severity="critical", site=SITE, job="ae-monitor", instance="x:9108"),
        alert(alertname="AeMonitorAnomaly", severity="warning", site=SITE, stream="inhibit-me", bundle="pump"),
        alert(alertname="AeMonitorAnomaly", severity="warning", site="plant-9", stream="other-site", bundle="pump"),
    ])  # fmt: skip

    def state(stream: str) -> dict[str, Any]:
        found = http_json(f'{scenario.alertmanager_url}/api/v2/alerts?filter=stream="{stream}"')
        return dict(found[0]["status"]) if found else {}

    wait_for(lambda: state("inhibit-me").get("state") == "suppressed", what="the inhibition")
    assert state("inhibit-me")["inhibitedBy"]
    assert state("other-site")["state"] == "active"


# --- Prometheus: the metrics page and the rules ---------------------------------------------------------------


def test_the_metrics_page_passes_promtool_check_metrics(scenario: Scenario) -> None:
    promtool = tool("promtool", "prometheus")
    status, page = http_get(scenario.daemon_url + "/metrics")
    assert status == 200
    lint = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, timeout=30)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, b"")


def test_every_rule_evaluates_without_error_on_the_live_metrics(scenario: Scenario) -> None:
    groups = http_json(f"{scenario.prometheus.url}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    deployed = yaml.safe_load((DEPLOY / "prometheus" / "ae-monitor-rules.yml").read_text())["groups"]
    assert len(rules) == sum(len(g["rules"]) for g in deployed)
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_the_prometheus_anomaly_rule_fired_for_the_faulty_pump(scenario: Scenario) -> None:
    fired = scenario.prometheus.query('max_over_time(ALERTS{alertname="AeMonitorStreamAnomaly"}[10m])')
    assert scenario.first.stream in {r["metric"]["stream"] for r in fired}


# --- Grafana: every panel query returns data --------------------------------------------------------------------


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def expand(expr: str, streams: list[str]) -> str:
    """Substitute the dashboard variables as Grafana would: a multi-value selection becomes a regex alternation."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    expr = expr.replace("$job", "ae-monitor").replace("$site", SITE).replace("$stream", "|".join(streams))
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


@pytest.mark.parametrize(("panel", "expr"), panel_queries(), ids=[p for p, _ in panel_queries()])
def test_the_dashboard_panel_query_returns_data(scenario: Scenario, panel: str, expr: str) -> None:
    result = scenario.prometheus.query(expand(expr, ["pump-1", "pump-2", "pump-3"]))
    assert result, f"{panel}: no data for {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(v == v for v in values), f"{panel}: only NaN for {expr}"


def test_the_dashboard_variables_find_the_site_and_every_stream(scenario: Scenario) -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name, wanted in (("job", {"ae-monitor"}), ("site", {SITE}), ("stream", {"pump-1", "pump-2", "pump-3"})):
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variables[name]["query"]["query"])
        assert match, variables[name]
        selector = match.group(1).replace("$job", "ae-monitor").replace("$site", SITE)
        # Grafana's label_values looks over the dashboard's time range, not at one instant: an evicted stream's
        # series (removed from /metrics) still counts.
        found = {r["metric"][match.group(2)] for r in scenario.prometheus.query(f"last_over_time({selector}[10m])")}
        assert found == wanted
