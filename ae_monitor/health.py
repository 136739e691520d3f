"""The daemon's HTTP endpoints and systemd notifications.

`/metrics` is the Prometheus exposition of the injected registry; `/healthz` (liveness) answers 200 while the main
loop's heartbeat is fresh — it does not fail because Kafka is down, so an orchestrator does not restart a process
that is only waiting for its brokers; `/readyz` answers 200 once bundles are loaded, the source is connected and
partitions are assigned (replay and the demo wait for their own `conditions`); it also shows what `describe` adds
(streams per learning state), and answers JSON for `/readyz?format=json`. `SystemdNotifier` speaks the
sd_notify protocol when `NOTIFY_SOCKET` is set.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Health:
    """Thread-safe liveness and readiness flags, written by the main loop and read by the HTTP threads."""

    def __init__(
        self,
        *,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        conditions: Sequence[str] = ("bundles", "source", "partitions"),
    ) -> None:
        self._stale_after_s, self._clock = stale_after_s, clock
        self._beat = clock()
        self._ready: dict[str, bool] = dict.fromkeys(conditions, False)
        self._details: dict[str, Callable[[], Mapping[str, int]]] = {}
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._beat = self._clock()

    def set(self, condition: str, value: bool) -> None:
        with self._lock:
            self._ready[condition] = value

    def alive(self) -> bool:
        with self._lock:
            return self._clock() - self._beat <= self._stale_after_s

    def ready(self) -> tuple[bool, dict[str, bool]]:
        with self._lock:
            return all(self._ready.values()), dict(self._ready)

    def describe(self, name: str, counts: Callable[[], Mapping[str, int]]) -> None:
        """Show `counts()` (say streams per learning state) under `name` on /readyz; it never decides readiness.
        `counts` is called on the HTTP server's thread."""
        with self._lock:
            self._details[name] = counts

    def details(self) -> dict[str, dict[str, int]]:
        with self._lock:
            found = dict(self._details)
        return {name: dict(counts()) for name, counts in found.items()}


class HealthServer:
    """Serves /metrics, /healthz and /readyz on a background thread."""

    def __init__(self, host: str, port: int, *, registry: CollectorRegistry, health: Health) -> None:
        handler = _handler(registry, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ae-monitor-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                alive = health.alive()
                self._reply(200 if alive else 503, b"ok\n" if alive else b"main loop stalled\n")
            elif path == "/readyz":
                ready, conditions = health.ready()
                details = health.details()
                if "format=json" in self.path.partition("?")[2]:
                    body = json.dumps({"ready": ready, "conditions": conditions, **details}).encode()
                    self._reply(200 if ready else 503, body, "application/json")
                    return
                lines = [f"{k}: {'ok' if v else 'waiting'}" for k, v in conditions.items()]
                for name, counts in details.items():
                    lines.append(f"{name}: " + " ".join(f"{k}={n}" for k, n in counts.items()))
                self._reply(200 if ready else 503, "".join(f"{line}\n" for line in lines).encode())
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the logs

    return Handler


class SystemdNotifier:
    """sd_notify over `NOTIFY_SOCKET`; a no-op when the variable is absent (not under systemd)."""

    def __init__(self, environ: dict[str, str] | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) recommends.
        self._watchdog_every_s = int(usec) / 2e6 if usec and usec.isdigit() else None
        self._last_ping = float("-inf")
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> None:
        if self._address is None:
            return
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Send WATCHDOG=1 if half the watchdog interval has passed (call it every loop iteration)."""
        if self._watchdog_every_s is None:
            return
        now = self._clock()
        if now - self._last_ping >= self._watchdog_every_s:
            self.notify("WATCHDOG=1")
            self._last_ping = now
