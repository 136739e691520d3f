"""deploy/alertmanager/alertmanager.yml checked offline with amtool: it loads, and the routing tree sends each
kind of ae_monitor alert to the intended receiver. (tests/test_deploy_live_stack.py runs it in a real
Alertmanager fed by the daemon.)"""

from __future__ import annotations

import subprocess

import pytest
from ops_tools import DEPLOY, tool

pytestmark = pytest.mark.ops

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [tool("amtool", "prometheus-alertmanager"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_the_example_config_passes_amtool_check_config() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ("alertname=AeMonitorAnomaly site=plant-3 stream=pump-7 severity=warning", "plant-3-maintenance"),
        ("alertname=AeMonitorAnomaly site=plant-3 stream=pump-7 severity=critical", "plant-3-oncall"),
        ("alertname=AeMonitorAnomaly site=plant-9 stream=pump-7 severity=critical", "maintenance"),
        ("alertname=AeMonitorAnomaly site=plant-3 stream=compressor-2 severity=warning",
         "compressor-team,plant-3-maintenance"),
        ("alertname=AeMonitorStreamAnomaly site=plant-3 stream=pump-7 severity=warning", "plant-3-maintenance"),
        ("alertname=AeMonitorStreamSilent site=plant-3 stream=pump-7 severity=warning", "plant-3-maintenance"),
        ("alertname=AeMonitorThresholdDrift site=plant-3 bundle=pump severity=warning", "model-owners"),
        ("alertname=AeMonitorDown site=plant-3 severity=critical", "platform-oncall"),
        ("alertname=AeMonitorHeartbeatStale site=plant-3 severity=critical", "platform-oncall"),
        ("alertname=AeMonitorNotReady site=plant-3 severity=warning", "platform"),
        ("alertname=AeMonitorDeadLetters site=plant-3 severity=warning", "platform"),
        ("alertname=SomethingElse", "platform"),
    ],
)  # fmt: skip
def test_alerts_are_routed_by_alertname_site_stream_and_severity(labels: str, receivers: str) -> None:
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels.split())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers
