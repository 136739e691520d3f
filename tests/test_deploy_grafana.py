"""deploy/grafana's dashboard read as Grafana would, without Grafana: what each query is scoped by, which panels
need the recording rules, and that the panels a user asked for are there (promtool checks the PromQL itself in
tests/test_deploy_prometheus.py; tests/test_deploy_live_stack.py runs every query against a live daemon)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ae_monitor.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "ae-monitor.json"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def test_every_query_and_variable_is_scoped_by_the_job_variable_not_a_fixed_job() -> None:
    variables = [v["name"] for v in dashboard()["templating"]["list"]]
    assert variables[:3] == ["datasource", "job", "site"]  # each query variable narrows the next
    selectors = [s for _, t in targets() for s in re.findall(r"\{[^}]*\}", t["expr"]) if "le=" not in s]
    assert selectors
    assert all('job=~"$job"' in s for s in selectors), [s for s in selectors if 'job=~"$job"' not in s]
    assert 'job="' not in DASHBOARD.read_text()
    by_name = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert by_name["job"]["query"]["query"] == "label_values(ae_monitor_ready, job)"
    assert 'job=~"$job"' in by_name["site"]["query"]["query"]
    assert 'job=~"$job"' in by_name["stream"]["query"]["query"]


def test_firing_alerts_are_annotations_on_the_time_series() -> None:
    prometheus = [a for a in dashboard()["annotations"]["list"] if a["datasource"].get("type") == "prometheus"]
    assert len(prometheus) == 1
    annotation = prometheus[0]
    assert annotation["enable"]
    assert annotation["expr"].startswith('ALERTS{alertname=~"AeMonitor.*",alertstate="firing",job=~"$job"')
    assert "{{alertname}}" in annotation["titleFormat"]


def test_a_panel_shows_each_channels_share_of_the_latest_alert_from_a_series_the_daemon_exports() -> None:
    exported = {family.name for family in Metrics(CollectorRegistry()).registry.collect()}
    panels = [p for p, t in targets() if "ae_monitor_alert_contribution{" in t["expr"]]
    assert [p["title"] for p in panels] == ["Channel shares of each stream's latest alert"]
    assert "ae_monitor_alert_contribution" in exported
    assert panels[0]["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_heatmaps_read_histogram_buckets_in_the_heatmap_format() -> None:
    heatmaps = [(p, t) for p, t in targets() if p["type"] == "heatmap"]
    assert heatmaps
    for panel, target in heatmaps:
        assert "_bucket{" in target["expr"], panel["title"]
        assert target["format"] == "heatmap", panel["title"]
        assert panel["options"]["calculate"] is False  # Prometheus already bucketed them


def test_the_score_threshold_panel_needs_no_recording_rule_and_panels_that_need_one_say_so() -> None:
    key = [t["expr"] for p, t in targets() if p["title"] == "Score / threshold per stream"]
    assert key
    assert all("ae_monitor:" not in expr for expr in key)
    for panel, target in targets():
        if "ae_monitor:" in target["expr"]:
            assert "deploy/prometheus/ae-monitor-rules.yml" in panel["description"], panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_a_panel_shows_the_streams_per_learning_state_and_the_trainings_from_series_the_daemon_exports() -> None:
    exported = {family.name for family in Metrics(CollectorRegistry()).registry.collect()}
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard()["panels"] if "targets" in p}
    exprs = panels["Per-stream learning: streams by state, trainings"]
    assert "sum by (state) (ae_monitor_learning_streams{" in exprs[0]
    assert "ae_monitor_learning_trainings_total{" in exprs[1]
    assert {"ae_monitor_learning_streams", "ae_monitor_learning_trainings"} <= exported
