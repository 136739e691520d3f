"""deploy/prometheus and deploy/grafana checked offline with promtool: the rules load, every alert has a unit
test and passes it, the example scrape config is valid, and every dashboard query is valid PromQL that names only
recording rules that exist. (tests/test_deploy_live_stack.py runs them against a live daemon.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from ops_tools import DEPLOY, tool

pytestmark = pytest.mark.ops

RULES = DEPLOY / "prometheus" / "ae-monitor-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "ae-monitor-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ae-monitor.json"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [tool("promtool", "prometheus"), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def rules() -> list[dict[str, str]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_the_rules_file_passes_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}  # fmt: skip
    assert alerts == tested


def test_every_alert_has_a_severity_and_a_runbook_section_in_the_operations_guide() -> None:
    guide = (DEPLOY.parent / "docs" / "operations.md").read_text()
    for rule in (r for r in rules() if "alert" in r):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == f"runbook-{rule['alert'].lower()}"
        assert f"### Runbook: {rule['alert']}" in guide, f"no runbook section for {rule['alert']}"


def test_the_example_scrape_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_exprs() -> list[str]:
    """Every panel query and annotation query."""
    board = json.loads(DASHBOARD.read_text())
    annotations = [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])] + annotations


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL only inside a rules file: wrap each query as a recording rule.
    builtins = {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "1h",
        "$job": ".*",
        "$site": ".*",
        "$stream": ".*",
    }
    exprs = dashboard_exprs()
    for name, value in builtins.items():
        exprs = [e.replace(name, value) for e in exprs]
    records = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    result = promtool("check", "rules", tmp_path / "panels.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_uses_only_recording_rules_that_are_defined() -> None:
    used = {m for e in dashboard_exprs() for m in re.findall(r"\bae_monitor:[a-z0-9_:]+", e)}
    defined = {r["record"] for r in rules() if "record" in r}
    assert used, "the dashboard should use the recording rules"
    assert used <= defined
