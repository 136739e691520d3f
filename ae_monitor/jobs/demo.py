"""`ae-monitor demo`: a synthetic machine, trained, calibrated and replayed with injected faults. No broker needed.

Three pumps share one design: a motor whose load follows a duty cycle drives current, pressure, vibration and
(with lag) temperature. The model learns that normal behaviour from one healthy pump, then three pumps are replayed
through the streaming pipeline: pump-1 stays healthy, pump-2 develops a bearing fault (vibration decouples from the
load), pump-3's pressure sensor drifts low. Alerts print as JSON lines; /metrics, /healthz and /readyz are served
while it runs, and the summary names each pump's fault and whether it was found.

The synthetic pumps' clock starts at 2026-01-01 and runs faster than the wall clock; the engine is given that
replayed clock, so the event-to-alert latency histogram measures delays in the pumps' time, not the months between
2026-01-01 and today.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from ae_monitor.config import Config, MetricsConfig, SinksConfig, config_from_dict
from ae_monitor.engine import Engine
from ae_monitor.health import Health
from ae_monitor.jobs.train import train_bundle
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle
from ae_monitor.records import Alert, DeadLetter
from ae_monitor.serve.http import metrics_server, offline_health
from ae_monitor.serve.offline import Runner, mark_ready
from ae_monitor.serve.outputs import Outputs, TeeSink, http_alert_sinks
from ae_monitor.sinks import AlertSink
from ae_monitor.sinks.jsonl import JsonlSink
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.replay import ReplaySource

log = logging.getLogger(__name__)

CHANNELS = ("vibration_rms", "motor_current_a", "pressure_bar", "temperature_c")
START_S = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

DEMO_CONFIG = {
    "features": {"kind": "sensor", "sensor": {"window_samples": 30, "hop_samples": 1, "sample_period_s": 1.0}},
    "model": {"kind": "dense", "hidden_units": [64, 32], "latent_dim": 6},
    "training": {"epochs": 40, "batch_size": 128, "early_stopping_patience": 5, "calibration_fraction": 0.15},
    "calibration": {"method": "pot", "pot_risk": 1e-4, "pot_initial_quantile": 0.95},
    "alerting": {"k": 5, "n": 10, "exit_ratio": 0.8, "min_duration_s": 5, "cooldown_s": 60},
    "replay": {"chunk_samples": 10, "max_gap_s": 30},
}


@dataclass(frozen=True)
class Fault:
    channel: str
    start_s: int
    end_s: int
    kind: str  # "decouple" (bearing wear) or "offset" (sensor drift)

    def describe(self) -> str:
        what = (f"bearing wear ({self.channel} decouples from the load)" if self.kind == "decouple"
                else f"sensor drift ({self.channel} reads low)")  # fmt: skip
        return f"{what} from {self.start_s} s to {self.end_s} s"


FAULTS = {
    "pump-1": None,
    "pump-2": Fault("vibration_rms", 500, 800, "decouple"),
    "pump-3": Fault("pressure_bar", 250, 450, "offset"),
}


def machine(
    n_s: int, rng: np.random.Generator, fault: Fault | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """`n_s` seconds of one pump at 1 Hz: values (n, 4) and a 0/1 fault label per row."""
    t = np.arange(-30, n_s, dtype=np.float64) + rng.uniform(0, 97)  # 30 s of run-in for the temperature lag
    load_all = 0.6 + 0.3 * np.sin(2 * np.pi * t / 97) + 0.1 * np.sin(2 * np.pi * t / 23 + 1.0)
    lagged = np.convolve(load_all, np.ones(30) / 30, mode="valid")[1:]
    load = load_all[30:]
    current = 8 + 6 * load + rng.normal(0, 0.15, n_s)
    pressure = 1.5 + 2.0 * load + rng.normal(0, 0.05, n_s)
    vibration = 0.2 + 0.5 * load + rng.normal(0, 0.03, n_s)
    temperature = 40 + 15 * lagged + rng.normal(0, 0.1, n_s)
    values = np.stack([vibration, current, pressure, temperature], axis=1)
    labels = np.zeros(n_s, dtype=np.int64)
    if fault is not None:
        _inject(values, labels, fault, rng)
    return values, labels


def _inject(
    values: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], fault: Fault, rng: np.random.Generator
) -> None:
    rows = slice(fault.start_s, fault.end_s)
    col = CHANNELS.index(fault.channel)
    n = fault.end_s - fault.start_s
    ramp = np.linspace(0.3, 1.0, n)
    if fault.kind == "decouple":
        values[rows, col] = 0.45 + ramp * rng.normal(0, 0.25, n)
    else:
        values[rows, col] -= 0.8 * ramp
    labels[rows] = 1


def write_csv(path: Path, values: npt.NDArray[np.float64], labels: npt.NDArray[np.int64] | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["datetime", *CHANNELS, *(["anomaly"] if labels is not None else [])])
        for i, row in enumerate(values):
            stamp = datetime.fromtimestamp(START_S + i, UTC).strftime("%Y-%m-%d %H:%M:%S")
            writer.writerow([stamp, *(f"{v:.5f}" for v in row), *([int(labels[i])] if labels is not None else [])])
    return path


def demo_config() -> Config:
    return config_from_dict(DEMO_CONFIG)


def make_data(out: Path, *, seed: int = 7, train_s: int = 5000, replay_s: int = 1000) -> tuple[Path, Path]:
    """Write the healthy training pump and the three replayed pumps as SKAB-style CSVs under `out`."""
    rng = np.random.default_rng(seed)
    write_csv(out / "train" / "pump-0.csv", machine(train_s, rng)[0], None)
    for name, fault in FAULTS.items():
        values, labels = machine(replay_s, rng, fault)
        write_csv(out / "replay" / f"{name}.csv", values, labels)
    return out / "train", out / "replay"


@dataclass(frozen=True)
class DemoResult:
    alerts: int
    detected: dict[str, bool]
    false_alarms: int
    windows: int
    false_alarms_by_pump: dict[str, int] = field(default_factory=dict)


def run_demo(
    out: Path,
    *,
    duration_s: float,
    alerts: AlertSink,
    registry: CollectorRegistry,
    health: Health | None = None,
    sleep: Callable[[float], None] = time.sleep,
    train_s: int = 5000,
) -> DemoResult:
    """Generate, train, calibrate, then replay paced to end within about `duration_s` seconds. `health` (the
    /readyz conditions) turns ready while the pumps stream, as does the `ae_monitor_ready` gauge."""
    started = time.monotonic()
    config = demo_config()
    replay_s = 1000
    train_dir, replay_dir = make_data(out, train_s=train_s, replay_s=replay_s)
    report = train_bundle(config, [train_dir], out / "bundle", name="demo-pump", progress=False)
    log.info("trained in %.1f s; threshold %.4g", report.result.seconds, report.bundle.threshold)
    speed = replay_s / max(5.0, duration_s - (time.monotonic() - started))
    source = ReplaySource([replay_dir], config.features, chunk_samples=config.replay.chunk_samples, pacing="realtime",
                          speed=speed, sleep=sleep)  # fmt: skip
    memory: MemorySink[Alert] = MemorySink()
    metrics = Metrics(registry)
    engine = Engine(load_bundle(out / "bundle"), alerting=config.alerting, metrics=metrics,
                    max_gap_s=config.replay.max_gap_s, clock=_ReplayedClock(START_S, speed))  # fmt: skip
    outputs = Outputs(alerts=TeeSink(alerts, memory), dead_letters=MemorySink[DeadLetter]())
    for name, fault in FAULTS.items():
        log.info("replaying %s: %s", name, "healthy" if fault is None else fault.describe())
    health = health or offline_health()
    mark_ready(health, metrics, True)
    windows = Runner(engine, outputs, metrics).run(source, max_records=len(FAULTS))
    mark_ready(health, metrics, False)
    return _summarise(memory, windows)


class _ReplayedClock:
    """The pumps' time as the paced replay advances it: `origin_s` at the first call, then `speed` times the
    wall clock. Alerts are timed, and their latency measured, on the clock their events were stamped with."""

    def __init__(self, origin_s: float, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._origin_s, self._speed, self._clock = origin_s, speed, clock
        self._started: float | None = None

    def __call__(self) -> float:
        now = self._clock()
        if self._started is None:
            self._started = now
        return self._origin_s + (now - self._started) * self._speed


def _summarise(memory: MemorySink[Alert], windows: int) -> DemoResult:
    firing = [a for a in memory.items if a.status == "firing"]
    detected: dict[str, bool] = {}
    by_pump: dict[str, int] = {}
    for name, fault in FAULTS.items():
        mine = [a for a in firing if a.stream.endswith(name)]
        if fault is None:
            by_pump[name] = len(mine)
            continue
        lo, hi = START_S + fault.start_s, START_S + fault.end_s
        detected[name] = any(lo - 30 <= a.event_time_s <= hi for a in mine)
        by_pump[name] = sum(not (lo - 30 <= a.event_time_s <= hi) for a in mine)
    return DemoResult(len(memory.items), detected, sum(by_pump.values()), windows, by_pump)


def summary_lines(result: DemoResult) -> list[str]:
    """One line per pump: what it carried and what the monitor made of it."""
    lines = []
    for name, fault in FAULTS.items():
        false = result.false_alarms_by_pump.get(name, 0)
        if fault is None:
            lines.append(f"{name}: healthy (no fault injected): {false} false alarm(s)")
        else:
            found = "DETECTED" if result.detected.get(name) else "MISSED"
            lines.append(f"{name}: {fault.describe()}: {found}, {false} false alarm(s) outside it")
    return lines


def demo(out: Path, *, duration_s: float, metrics_port: int, sinks: SinksConfig | None = None) -> int:
    """`ae-monitor demo`: run the embedded demo with /metrics served; exit status 0 when every fault was detected.
    Alerts print as JSON lines and also go to the Alertmanager and webhook of `sinks` that have a url."""
    registry = CollectorRegistry()
    health = offline_health()
    with metrics_server(MetricsConfig(port=metrics_port), registry, health=health) as port:
        http, closers = http_alert_sinks(sinks or SinksConfig(), generator_url=f"http://127.0.0.1:{port}/metrics")
        try:
            alerts = TeeSink(JsonlSink.open("-"), *http.values())
            result = run_demo(out, duration_s=duration_s, alerts=alerts, registry=registry, health=health)
        finally:
            for close in closers:
                close()
    for line in summary_lines(result):
        log.info("%s", line)
    log.info("%d windows scored, %d alert events, %d false alarms", result.windows, result.alerts, result.false_alarms)
    return 0 if all(result.detected.values()) else 1
