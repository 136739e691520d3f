"""deploy/systemd/ae-monitor.service: `systemd-analyze verify` finds nothing to say, `systemd-analyze security`
scores the hardening at most 2.0, every directive is commented, and a real `ae-monitor serve` started the way
systemd starts a Type=notify service (NOTIFY_SOCKET, WATCHDOG_USEC) sends READY=1, then WATCHDOG=1 at half the
watchdog interval, then STOPPING=1 on SIGTERM."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from ops_tools import DEPLOY, tool

from ae_monitor.config import config_from_dict, dump_config
from ae_monitor.jobs.demo import DEMO_CONFIG

pytestmark = pytest.mark.ops

UNIT = DEPLOY / "systemd" / "ae-monitor.service"
# Several processes on one host (docs/scaling.md): checked as an instance of it, `ae-monitor@1.service`.
TEMPLATE = DEPLOY / "systemd" / "ae-monitor@.service"
INSTALLED_BINARY = "/usr/local/bin/ae-monitor"


def unit_with_binary(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at this checkout's `ae-monitor` entry point instead of the install path
    (verify checks that the binary exists and is executable); nothing else changes. A template is written as its
    instance `1`."""
    binary = shutil.which("ae-monitor", path=str(Path(sys.executable).parent))
    assert binary, "ae-monitor is not installed in the venv (pip install -e .)"
    text = unit.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    path = tmp_path / unit.name.replace("@.", "@1.")
    path.write_text(text.replace(INSTALLED_BINARY, binary))
    return path


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    argv = [tool("systemd-analyze", "systemd"), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda u: u.name)
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path, unit: Path) -> None:
    result = analyze("verify", unit_with_binary(tmp_path, unit))
    # verify exits 0 even on unknown keys (it only warns): any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_does_check_the_unit_it_is_given(tmp_path: Path) -> None:
    # Proof that the check above is not vacuous: the unmodified unit names a binary absent here and says so,
    # and an unknown directive is reported.
    missing = analyze("verify", UNIT)
    assert f"Command {INSTALLED_BINARY} is not executable" in missing.stdout + missing.stderr
    broken = tmp_path / "ae-monitor.service"
    broken.write_text(unit_with_binary(tmp_path).read_text().replace("Type=notify", "Type=notify\nNoSuchKey=1"))
    assert "NoSuchKey" in (lambda r: r.stdout + r.stderr)(analyze("verify", broken))


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda u: u.name)
def test_systemd_analyze_security_scores_the_unit_at_most_2(tmp_path: Path, unit: Path) -> None:
    result = analyze("security", "--offline=yes", unit_with_binary(tmp_path, unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda u: u.name)
def test_every_directive_is_commented(unit: Path) -> None:
    # Every run of consecutive directive lines follows a comment line that says why.
    previous = ""
    directives = 0
    for line in unit.read_text().splitlines():
        if re.match(r"[A-Za-z]+=", line):
            directives += 1
            assert previous.startswith("#") or re.match(r"[A-Za-z]+=", previous), f"uncommented: {line}"
        previous = line
    assert directives >= 40


def test_the_template_runs_one_config_and_state_directory_per_instance() -> None:
    text = TEMPLATE.read_text()
    assert "ExecStart=/usr/local/bin/ae-monitor serve --config /etc/ae-monitor/%i.toml" in text
    assert re.search(r"^StateDirectory=ae-monitor/%i$", text, re.M)
    assert re.search(r"^CacheDirectory=ae-monitor/%i$", text, re.M)
    # Apart from the instance's paths, the template is the plain unit (one place to change the hardening).
    plain, instance = _directives(UNIT.read_text()), _directives(text)
    assert plain - instance == {"Description=ae_monitor anomaly detection daemon (Kafka in, alerts out)"}
    assert instance - plain == {"Description=ae_monitor anomaly detection daemon %i (Kafka in, alerts out)"}


def _directives(text: str) -> set[str]:
    """Directive lines that name no path of ours."""
    return {line for line in text.splitlines() if re.match(r"[A-Za-z]+=", line) and "ae-monitor" not in line}


def test_the_unit_keeps_the_daemon_drain_inside_the_stop_timeout() -> None:
    text = UNIT.read_text()
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    env = (DEPLOY / "systemd" / "ae-monitor.env.example").read_text()
    grace_s = float(re.search(r"^AE_MONITOR_SERVICE__SHUTDOWN_GRACE_S=(\S+)$", env, re.M).group(1))  # type: ignore[union-attr]
    assert grace_s < stop_s
    for directive in (
        "Type=notify",
        r"WatchdogSec=\d+",
        "Restart=always",
        "DynamicUser=yes",
        "StateDirectory=ae-monitor",
        "CacheDirectory=ae-monitor",
    ):
        assert re.search(f"^{directive}$", text, re.M), directive


def test_serve_speaks_the_notify_protocol_at_the_watchdog_pace(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, tmp_path: Path
) -> None:
    watchdog_s = 2.0  # WatchdogSec=2: the daemon must ping every 1 s
    topic = kafka_topic(1)
    tag = topic.rsplit("-", 1)[-1]
    config = config_from_dict({
        **DEMO_CONFIG,
        "kafka": {"bootstrap_servers": [kafka_bootstrap]},
        "source": {"topics": [topic], "group_id": f"g-{tag}", "session_timeout_ms": 6000},
        "routes": [{"match": "*", "bundle_path": str(sensor_bundle)}],
        "sinks": {"kafka": {"alerts_topic": f"alerts-{tag}", "dead_letter_topic": None, "state_topic": None}},
        "service": {"http_port": 0, "log_format": "text", "shutdown_grace_s": 5},
    })  # fmt: skip
    (tmp_path / "serve.toml").write_text(dump_config(config))
    name = f"ae-monitor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # the abstract namespace, as NOTIFY_SOCKET="@..." names it
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
        argv = [sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(tmp_path / "serve.toml")]
        with (tmp_path / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            messages = receive(sock, until=lambda m: m.count("WATCHDOG=1") >= 5, timeout_s=60)
            daemon.send_signal(signal.SIGTERM)
            messages += receive(sock, until=lambda m: "STOPPING=1" in m, timeout_s=20)
            assert daemon.wait(timeout=20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=5)
    names = [m for _, m in messages]
    assert names[0] == "READY=1", (tmp_path / "daemon.log").read_text()
    assert names[-1] == "STOPPING=1"
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(watchdog_s / 2 - 0.05 <= gap <= watchdog_s / 2 + 0.5 for gap in gaps), gaps
    assert pings[0] >= messages[0][0]


def receive(sock: socket.socket, *, until: Callable[[list[str]], bool], timeout_s: float) -> list[tuple[float, str]]:
    """(monotonic arrival time, message) of every datagram until `until(messages)` holds."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout_s
    while not until([m for _, m in got]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"timed out; notifications so far: {got}")
        sock.settimeout(remaining)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got.append((time.monotonic(), data.decode()))
    return got
