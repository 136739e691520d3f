"""The operations side of retraining: the dashboard's retraining row reads series the daemon exports (every query
returns data against a live daemon in tests/test_deploy_live_stack.py, which runs all panel queries), and the
systemd timer that runs the nightly retraining job passes `systemd-analyze verify` and `security` as the daemon's
unit does."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from ops_tools import DEPLOY
from prometheus_client import CollectorRegistry
from test_deploy_grafana import dashboard
from test_deploy_systemd import analyze, unit_with_binary

from ae_monitor.metrics import Metrics

SERVICE = DEPLOY / "systemd" / "ae-monitor-retrain.service"
TIMER = DEPLOY / "systemd" / "ae-monitor-retrain.timer"


def row_panels(title: str) -> list[dict[str, object]]:
    """The panels under the row `title` (down to the next row)."""
    panels = sorted(dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == title)
    rest = panels[start + 1 :]
    end = next((i for i, p in enumerate(rest) if p["type"] == "row"), len(rest))
    return rest[:end]


def test_the_retraining_row_shows_outcomes_shadow_alerts_streams_retraining_and_promotions() -> None:
    exprs = {str(p["title"]): [t["expr"] for t in p["targets"]]  # type: ignore[attr-defined]
             for p in row_panels("Retraining lifecycle (per-stream learning)")}  # fmt: skip
    assert exprs["Retrainings by outcome"] == [
        'sum by (outcome) (increase(ae_monitor_learning_retrainings_total{job=~"$job",site=~"$site"}'
        "[$__rate_interval]))"
    ]
    shadow = exprs["Candidates in shadow and their would-be alerts"]
    assert 'state="retraining"' in shadow[0]
    assert "ae_monitor_shadow_alerts_total{" in shadow[1]
    # No learned stream lives here, no shadow series: the panel says 0 rather than "no data".
    assert " or on () (0 * sum(ae_monitor_learning_streams{" in shadow[1]
    assert "[$__range]" in exprs["Promotions, discards, failures (dashboard range)"][0]
    exported = {family.name for family in Metrics(CollectorRegistry()).registry.collect()}
    named = {m.removesuffix("_total") for es in exprs.values() for e in es for m in re.findall(r"ae_monitor_\w+", e)}
    assert named <= exported


@pytest.mark.ops
def test_systemd_analyze_verify_prints_nothing_for_the_retraining_service_and_its_timer(tmp_path: Path) -> None:
    service = unit_with_binary(tmp_path, SERVICE)
    timer = Path(shutil.copy(TIMER, tmp_path))
    result = analyze("verify", service, timer)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    broken = tmp_path / "ae-monitor-retrain.timer"
    broken.write_text(TIMER.read_text().replace("Persistent=true", "Persistent=true\nNoSuchKey=1"))
    assert "NoSuchKey" in (lambda r: r.stdout + r.stderr)(analyze("verify", service, broken))


@pytest.mark.ops
def test_the_retraining_service_is_hardened_as_the_daemon_is(tmp_path: Path) -> None:
    result = analyze("security", "--offline=yes", unit_with_binary(tmp_path, SERVICE))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


@pytest.mark.parametrize("unit", [SERVICE, TIMER], ids=lambda u: u.name)
def test_every_directive_of_the_retraining_units_is_commented(unit: Path) -> None:
    previous = ""
    for line in unit.read_text().splitlines():
        if re.match(r"[A-Za-z]+=", line):
            assert previous.startswith("#") or re.match(r"[A-Za-z]+=", previous), f"uncommented: {line}"
        previous = line


def test_the_timer_runs_the_retraining_service_nightly_and_catches_up_a_missed_night() -> None:
    timer, service = TIMER.read_text(), SERVICE.read_text()
    for directive in ("Unit=ae-monitor-retrain.service", "Persistent=true", r"OnCalendar=\*-\*-\* 02:17:00"):
        assert re.search(f"^{directive}$", timer, re.M), directive
    assert re.search(r"^Type=oneshot$", service, re.M)
    # It registers a candidate and never moves production (as the CronJob).
    assert "--promote candidate" in service
    assert "production" not in "".join(line for line in service.splitlines() if line.startswith("ExecStart="))
    # The daemon's dynamic user and state directory: what it registers stays readable by the daemon.
    assert re.search(r"^User=ae-monitor$", service, re.M)
    assert re.search(r"^StateDirectory=ae-monitor$", service, re.M)
