"""Helpers for the deploy tests: find the operations tools, start real Prometheus / Alertmanager instances on
loopback (temp dirs, own configs), and always stop what was started.

`make test` installs the tools first (scripts/install_ops_tools.sh: Debian packages `prometheus`,
`prometheus-alertmanager`, `systemd`). A test that needs a missing tool skips with the exact reason.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
INSTALL_HINT = "run `make test` (it runs scripts/install_ops_tools.sh) or `sudo sh scripts/install_ops_tools.sh`"


def tool(name: str, package: str) -> str:
    """The path of `name`, or skip the test saying which package provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package `{package}`); {INSTALL_HINT}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], *, timeout_s: float = 30, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def http_get(url: str, *, timeout_s: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def http_json(url: str, body: Any = None, *, timeout_s: float = 5) -> Any:
    """GET `url` (or POST `body` as JSON) and return the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read()
    return json.loads(text) if text else None


@contextmanager
def process(argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` with output to `log`; terminate it (then kill) when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


class Prometheus:
    """A real Prometheus on 127.0.0.1 with the given config; `query` runs PromQL through the HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def targets_up(self) -> bool:
        targets = http_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)


@contextmanager
def prometheus(config: dict[str, Any], tmp: Path) -> Iterator[Prometheus]:
    binary = tool("prometheus", "prometheus")
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    argv = [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"]  # fmt: skip
    with process(argv, log=tmp / "prometheus.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is not None or http_get(url + "/-/ready")[0] == 200, what="Prometheus ready")
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()
        yield Prometheus(url)


@contextmanager
def alertmanager(config_text: str, tmp: Path) -> Iterator[str]:
    """A real Alertmanager (gossip disabled) with `config_text`; yields its base URL."""
    binary = tool("prometheus-alertmanager", "prometheus-alertmanager")
    (tmp / "alertmanager.yml").write_text(config_text)
    port = free_port()
    argv = [binary, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]  # fmt: skip
    with process(argv, log=tmp / "alertmanager.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is not None or http_get(url + "/-/ready")[0] == 200, what="Alertmanager ready")
        assert proc.poll() is None, (tmp / "alertmanager.log").read_text()
        yield url
