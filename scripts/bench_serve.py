"""`ae-monitor serve` against the plain Kafka consume ceiling, through a real local broker, in one run.

Four measurements, side by side on the same machine and broker (compare the ratios, not absolute figures):

1. ceiling: N single-sample sensor records (`{"ts": ..., "values": {...}}`, ~130 bytes, keyed by stream, streams
   round-robin) are produced to a fresh one-partition topic; a plain kafka-python `KafkaConsumer` reads them all and
   `json.loads` each value, in a bare subprocess (scripts/kafka_ceiling.py) so that this process's heap (torch,
   numpy) does not slow it down. Rate = N / (first non-empty poll -> last record parsed).
2. serve: `ae_monitor.serve.app.serve` (what `ae-monitor serve` runs) in a thread of this process, on the same topic
   from the earliest offset with a fresh consumer group, production sinks (alerts, dead-letter and state topics; no
   scores topic). Rate = N / (first record counted by `ae_monitor_records_total` -> last window counted by
   `ae_monitor_windows_scored_total`), both counters read in-process every few ms. Goal: >= 75 % of the ceiling.
3. latency: `ae-monitor serve` as a subprocess, on a fresh topic stamped with the broker's append time
   (LogAppendTime), while a Java producer (scripts/kafka/PacedProducer.java: kafka-python could not offer the
   goal's rate here next to serve) sends paced single-sample records, each `ts` = wall time at its send(),
   with a strong fault (pressure +20 bar, 40 rows) switched on every 120 rows in every 4th stream. Run A at half the
   ceiling (the goal), run B at half serve's rate from 2. (how fast the path is when serve keeps up).
   append -> alert = (when this process's consumer of the alerts topic receives the firing alert) - (broker append
   time of the record that completed the window which fired it; from its produce ack, ms resolution). That record
   is found without trusting serve: the alert's `event_time_s` must be the start of the window ending at a fault
   onset (else the alert counts as a false alarm or "other"); with hop 1 every window containing a fault row is
   anomalous, so the k-th of them (k of n) fires: were one not, the real trigger would be later and the figure an
   upper bound. An onset inside an episode already firing (a false alarm just before) is "masked", not expected;
   an expected alert that never came counts with the lower bound (end of waiting - append). send -> alert starts at
   the send() call instead (adds the producer's queueing); append -> detection ends at the alert's
   `detection_time_s` (serve's clock; same host). Goal: run A p99 append -> alert < 100 ms. With `--trace DIR`, the
   latency runs' serve is scripts/serve_traced.py (the same serve, each step stamped) and every alert's time is split
   into stages: append -> poll start -> poll end -> detection -> submit -> broker ack -> received.
4. audio: 1 s chunks of 16 kHz mono s16le PCM for several streams, pre-produced, through serve in a thread with the
   default DCASE dense model (untrained weights, gamma-calibrated: speed needs no training), 8 MiB partition
   fetches (`source.max_partition_fetch_bytes`, as configs/audio-dcase.toml). x real time per core =
   audio seconds / wall seconds / cores, cores = max(1, CPU seconds of this whole process / wall seconds) over the
   measured span (torch 1 thread; serve's Kafka and HTTP threads and the idle polling thread are counted).
   Goal: >= 2,500x. The note also gives audio seconds per CPU second of this process (not bound by wall time,
   so a machine busy with other work lowers it less), and the offline path's (`jobs.data.score_signal`, each
   stream's audio as one signal) on the same audio in this process: what serve adds is the difference; with
   `--trace DIR` both are split by CPU time into poll, decoding, features, forward pass, window aggregation and the
   rest of the engine.
5. memory: `ae-monitor serve` as a subprocess (torch backend, production sinks, the sensor bundle) on a fresh topic:
   its resident memory (VmRSS) at rest (ready, 3 s after), with 10,000 active streams (one record per stream and
   window row produced, every record counted, 1 s after), and after they were evicted as idle
   (`streams.idle_eviction_s` shortened to 5 s for the run; gc + malloc_trim is serve's own housekeeping). Goals:
   <= 400 MB at rest with one bundle, <= +200 MB for 10,000 streams, memory returned after eviction.

Every part runs once per client (`--client`; default both when confluent-kafka is installed), the clients in turn
within each part, so that their figures are minutes apart; a last table puts each client's figures side by side
with the ratios and goals of issue 14 (serve >= 90 % of its client's ceiling; with librdkafka serve >= 2x the
rate it reaches with kafka-python).

    .venv/bin/python scripts/bench_serve.py [--records 200000] [--bootstrap HOST:PORT] [--bundle DIR]
                                            [--json OUT] [--quick] [--strict] [--profile DIR] [--trace DIR]
                                            [--parts throughput,latency,audio,memory]
                                            [--client kafka-python,confluent]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import cProfile
import gc
import importlib.util
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from kafka.admin import KafkaAdminClient
from kafka.consumer import KafkaConsumer
from kafka.producer import KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from ae_monitor.config import (
    CalibrationConfig,
    Config,
    FeaturesConfig,
    KafkaSourceConfig,
    ModelConfig,
    TrainingConfig,
    config_from_dict,
    dump_config,
)
from ae_monitor.features import build_extractor
from ae_monitor.jobs.data import Signal
from ae_monitor.jobs.demo import CHANNELS, DEMO_CONFIG, machine, write_csv
from ae_monitor.jobs.train import train_bundle, window_scores
from ae_monitor.model.bundle import Bundle, load_bundle, save_bundle, weights_version
from ae_monitor.model.networks import build_model
from ae_monitor.scoring import window_hop_s, window_plan
from ae_monitor.serve.app import serve
from ae_monitor.threshold import calibrate

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKER_SCRIPT = REPO_ROOT / "scripts" / "kafka_broker.py"
CEILING_SCRIPT = REPO_ROOT / "scripts" / "kafka_ceiling.py"
TRACED_SERVE = REPO_ROOT / "scripts" / "serve_traced.py"
PACED_PRODUCER = REPO_ROOT / "scripts" / "kafka" / "PacedProducer.java"
KAFKA_LIBS = REPO_ROOT / "scripts" / "kafka" / "libs"

GOAL_SERVE_RATIO = 0.90  # issue 14 (was 75 %), with each client
GOAL_SPEEDUP = 2.0  # issue 14: serve with librdkafka >= 2x its rate with kafka-python
GOAL_P99_MS = 100.0  # issue 14 (was 250 ms)
GOAL_AUDIO_X = 2500.0  # issue 14 (was 1,000x; the offline path does about 3,100x)
GOAL_RSS_REST_MB = 400.0  # issue 14, at rest with one bundle
GOAL_RSS_STREAMS_MB = 200.0  # issue 14, added by 10,000 active streams

START_S = 1_767_225_600.0  # 2026-01-01: event time of the pre-produced sensor records (1 s per row and stream)
SAMPLE_RATE = 16000
FAULT_CHANNEL, FAULT_OFFSET = 2, 20.0  # pressure_bar + 20 bar (normal: 1.5-3.5 bar, noise 0.05)
FAULTY_EVERY = 4  # every 4th stream of the latency run carries faults
# Per-stream rows of the latency runs: onsets at 60 + offset + j * 120 (after the 30-row warm-up), 40 faulty rows; the
# alert resolves about 30 rows after, well before the next onset.
FAULT_FIRST_ROW, FAULT_PERIOD, FAULT_ROWS = 60, 120, 40
POLL_S = 0.005
# serve dates a window's end by the sample after it, or (not there yet) by the last ts + sample_period_s, and its
# alert state machine skips windows ending no later than the last one: with wall-clock ts ~10 ms apart and the
# bundle's 1 s period, windows would be skipped. The latency runs use a copy of the bundle with a period below any
# ts spacing they produce (only that extrapolation reads it).
LATENCY_SAMPLE_PERIOD_S = 1e-4
# Serve's alerting for the runs: the demo's k of n and hysteresis, without minimum duration or cooldown, so every
# fault onset fires exactly k windows later.
ALERTING = {"k": 5, "n": 10, "exit_ratio": 0.8, "min_duration_s": 0.0, "cooldown_s": 0.0}

PARTS = ("throughput", "latency", "audio", "memory")
CLIENTS = ("kafka-python", "confluent")
ROW_PRODUCE = "setup: produce (kafka-python)"
ROW_CEILING = "ceiling: consume + json.loads"
ROW_SERVE = "serve: sensor records"
ROW_AUDIO = "audio: x real time per core"
ROW_RSS_REST = "memory: serve RSS at rest"
ROW_RSS_STREAMS = "memory: + active streams"
ROW_RSS_EVICTED = "memory: returned after eviction"
ROW_SPEEDUP = "serve: x kafka-python's serve"
LATENCY_ROWS = ("send rate", "p50 append->alert", "p99 append->alert", "p99 send->alert", "p99 append->detection")
# Latency A runs at half the ceiling (the goal); B at half serve's measured rate (how fast the latency path is when
# serve keeps up).
ROWS = (ROW_PRODUCE, ROW_CEILING, ROW_SERVE, *(f"latency {run}: {row}" for run in "AB" for row in LATENCY_ROWS),
        ROW_AUDIO, ROW_RSS_REST, ROW_RSS_STREAMS, ROW_RSS_EVICTED)  # fmt: skip

F64 = npt.NDArray[np.float64]
Message = tuple[bytes, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Settings:
    records: int
    streams: int
    latency_s: float
    latency_rate: float | None
    audio_streams: int
    audio_seconds: int
    train_rows: int
    epochs: int
    wait_s: float  # at most, after sending, for alerts still to come
    memory_streams: int


DEFAULTS = Settings(200_000, 200, 15.0, None, 8, 150, 3000, 40, 30.0, 10_000)
QUICK = Settings(6_000, 20, 2.0, None, 2, 20, 1500, 3, 3.0, 200)


@dataclass
class Row:
    """One line of the table: a figure, and where it has one, its goal and verdict."""

    name: str
    value: float
    unit: str
    goal: str = ""
    ratio: str = ""
    passed: bool | None = None
    note: str = ""


@dataclass
class Figures:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""  # added to the names of the rows added from now on (the client, when several are measured)

    def add(self, row: Row, **details: Any) -> None:
        row = replace(row, name=row.name + self.suffix)
        self.rows.append(row)
        self.details[row.name] = details


# ----------------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, help=f"sensor records for ceiling and serve ({DEFAULTS.records})")
    parser.add_argument("--streams", type=int, help=f"sensor streams, round-robin ({DEFAULTS.streams})")
    parser.add_argument("--latency-seconds", type=float, help=f"paced latency run ({DEFAULTS.latency_s:g} s)")
    parser.add_argument("--latency-rate", type=float, help="records/s of latency run A (half the ceiling)")
    parser.add_argument("--audio-streams", type=int, help=f"audio streams ({DEFAULTS.audio_streams})")
    parser.add_argument("--audio-seconds", type=int, help=f"1 s chunks per audio stream ({DEFAULTS.audio_seconds})")
    parser.add_argument("--memory-streams", type=int, help=f"active streams of the memory part "
                        f"({DEFAULTS.memory_streams:,})")  # fmt: skip
    parser.add_argument("--bootstrap", help="use this broker (host:port) instead of starting one")
    parser.add_argument("--bundle", type=Path, help="sensor bundle to serve (default: train a small one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test), figures not meaningful")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    parser.add_argument("--profile", type=Path, help="cProfile serve's thread (sensor, audio runs) into DIR")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)} (latency without throughput needs "
                        "--latency-rate and runs A only)")  # fmt: skip
    parser.add_argument("--client", "--clients", default=",".join(default_clients()),
                        help="serve's kafka.client, or several comma-separated (kafka-python,confluent) to measure "
                        "each part with each in turn; the ceiling is read with the same library (default: both "
                        "when confluent-kafka is installed)")  # fmt: skip
    parser.add_argument("--trace", type=Path, help="trace every step of the latency runs' serve (scripts/"
                        "serve_traced.py) into DIR and print where each alert's time went")  # fmt: skip
    args = parser.parse_args(argv)
    args.parts = tuple(part.strip() for part in args.parts.split(","))
    args.client = tuple(client.strip() for client in args.client.split(","))
    if unknown := set(args.client) - {"kafka-python", "confluent"}:
        parser.error(f"unknown clients {sorted(unknown)}")
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}")
    if "latency" in args.parts and "throughput" not in args.parts and args.latency_rate is None:
        parser.error("latency without throughput needs --latency-rate")
    return args


def settings_of(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else DEFAULTS
    given = {
        "records": args.records,
        "streams": args.streams,
        "latency_s": args.latency_seconds,
        "latency_rate": args.latency_rate,
        "audio_streams": args.audio_streams,
        "audio_seconds": args.audio_seconds,
        "memory_streams": args.memory_streams,
    }
    merged = {**asdict(base), **{k: v for k, v in given.items() if v is not None}}
    settings = Settings(**merged)
    if min(settings.records, settings.streams, settings.audio_streams, settings.audio_seconds,
           settings.memory_streams) < 1:  # fmt: skip
        raise SystemExit("--records, --streams, --audio-streams, --audio-seconds and --memory-streams must be at "
                         "least 1")  # fmt: skip
    return settings


def default_clients() -> tuple[str, ...]:
    """Both clients when confluent-kafka is installed, else kafka-python alone."""
    return CLIENTS if importlib.util.find_spec("confluent_kafka") is not None else CLIENTS[:1]


def environment() -> dict[str, Any]:
    from kafka.record import util as kafka_record_util

    load1, load5, _ = os.getloadavg()
    return {
        # Pure-Python CRC32C (no `crc32c` package) costs kafka-python ~2.7 ms per 32 KB record batch it checks.
        "kafka_crc32c": "C (crc32c package)" if kafka_record_util.crc32c_c is not None else "pure Python",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
    }


# -------------------------------------------------------------------------------------------------------- kafka


def _broker_script() -> ModuleType:
    """scripts/kafka_broker.py, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("kafka_broker", BROKER_SCRIPT)
    assert spec is not None, BROKER_SCRIPT
    assert spec.loader is not None, BROKER_SCRIPT
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def kafka_broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, or a throwaway local one, stopped on exit."""
    if bootstrap:
        yield bootstrap
        return
    script = _broker_script()
    started = time.perf_counter()
    broker = script.start_broker()
    print(f"local Kafka broker on {broker.bootstrap} (pid {broker.pid}), up in {time.perf_counter() - started:.1f} s")
    try:
        yield broker.bootstrap
    finally:
        script.stop_broker(broker)


class Topics:
    """Creates uniquely named topics and deletes them (and the daemons' output topics) at the end."""

    def __init__(self, bootstrap: str) -> None:
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ae-monitor-bench")
        self.run_id = uuid.uuid4().hex[:8]
        self._created: list[str] = []

    def create(self, kind: str, configs: dict[str, str] | None = None) -> str:
        name = f"bench-{kind}-{self.run_id}"
        if name in self._created:  # the same part again, with another client
            name += f"-{sum(t.startswith(name) for t in self._created) + 1}"
        spec = {"num_partitions": 1, "replication_factor": 1, "configs": configs or {}}
        self._admin.create_topics({name: spec}, wait_for_metadata=True)
        self._created.append(name)
        return name

    def forget_later(self, *names: str) -> None:
        self._created.extend(names)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # tidiness only: a throwaway broker goes away anyway
            existing = set(self._admin.list_topics())
            self._admin.delete_topics([t for t in self._created if t in existing])
        self._admin.close()


def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> float:
    """Send every message and wait for the acks; returns messages per second."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=10, batch_size=256 * 1024)
    started = time.perf_counter()
    for key, value, headers in messages:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close()
    return len(messages) / seconds


def consume_ceiling(bootstrap: str, topic: str, n: int, max_poll_records: int,
                    client: str = "kafka-python") -> tuple[float, float]:  # fmt: skip
    """Plain consumer (of `client`'s library) + json.loads of `n` records in a bare subprocess
    (scripts/kafka_ceiling.py: no torch or numpy in its heap): (msg/s, seconds from the first non-empty poll)."""
    out = subprocess.run([sys.executable, str(CEILING_SCRIPT), bootstrap, topic, str(n),
                          "--max-poll-records", str(max_poll_records), "--client", client],
                         capture_output=True, text=True, check=True, timeout=180)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["msg_per_s"]), float(result["seconds"])


# ------------------------------------------------------------------------------------------------------- bundles


def train_sensor_bundle(out: Path, settings: Settings) -> Path:
    """The demo's small dense sensor bundle, trained on one healthy synthetic pump."""
    data = write_csv(out / "train" / "pump-0.csv", machine(settings.train_rows, np.random.default_rng(7))[0], None)
    config = config_from_dict(DEMO_CONFIG)
    config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": settings.epochs})})
    return train_bundle(config, [data], out / "sensor-bundle", name="bench-pump", progress=False).path


def with_sample_period(path: Path, out: Path, period_s: float) -> Path:
    """A copy of the sensor bundle at `path` whose `sample_period_s` is `period_s` (weights and version unchanged)."""
    bundle = load_bundle(path)
    sensor = bundle.features.sensor.model_copy(update={"sample_period_s": period_s})
    features = bundle.features.model_copy(update={"sensor": sensor})
    extractor = build_extractor(features, bundle.extractor.to_manifest())
    return save_bundle(replace(bundle, features=features, extractor=extractor), out)


def synthetic_audio(seconds: float, rng: np.random.Generator) -> F64:
    """A machine-like sound: a drifting fundamental with harmonics, mains hum and broadband noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(40.0, 400.0)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 0.3 * t))) / SAMPLE_RATE
    tone = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 9))
    noise = rng.normal(0.0, rng.uniform(0.05, 0.3), t.shape)
    result: F64 = 0.1 * (tone + 0.3 * np.sin(2 * np.pi * 50.0 * t) + noise)
    return result


def make_audio_bundle(out: Path) -> Path:
    """The default DCASE dense bundle, untrained (initialised weights), gamma-calibrated on synthetic audio."""
    torch.manual_seed(0)
    features = FeaturesConfig()
    extractor = build_extractor(features)
    model = build_model(ModelConfig(), extractor.vector_shape).eval()
    bundle = Bundle(name="bench-audio", version=weights_version(model), features=features, model_config=ModelConfig(),
                    training=TrainingConfig(), extractor=extractor, model=model, calibration=None,
                    extra={})  # fmt: skip
    clip = synthetic_audio(20.0, np.random.default_rng(1)).astype(np.float32)
    signal_ = Signal("calibration", clip, np.arange(len(clip), dtype=np.float64) / SAMPLE_RATE, ())
    scores = window_scores(bundle, [signal_])
    calibration = calibrate(scores, CalibrationConfig(), window_hop_s=window_hop_s(features))
    return save_bundle(bundle.with_calibration(calibration, scores), out / "audio-bundle")


# ------------------------------------------------------------------------------------------------------- records


def normal_rows(channels: tuple[str, ...], n_rows: int, seed: int) -> F64:
    """`n_rows` healthy samples of one stream: the demo's pump when the bundle has its channels, noise otherwise."""
    rng = np.random.default_rng(seed)
    if channels == CHANNELS:
        return machine(n_rows, rng)[0]
    noise: F64 = rng.normal(0.0, 1.0, (n_rows, len(channels)))
    return noise


def values_json(channels: tuple[str, ...], rows: F64) -> list[bytes]:
    return [json.dumps(dict(zip(channels, np.round(row, 4).tolist(), strict=True))).encode() for row in rows]


def sensor_record(ts: float, values: bytes) -> bytes:
    return b'{"ts": ' + repr(ts).encode() + b', "values": ' + values + b"}"


def stream_keys(streams: int) -> list[bytes]:
    return [f"pump-{i:04d}".encode() for i in range(streams)]


def throughput_messages(channels: tuple[str, ...], streams: int, rows: int) -> list[Message]:
    """`rows` samples per stream, streams round-robin, event time 1 s per row."""
    keys = stream_keys(streams)
    per_stream = [values_json(channels, normal_rows(channels, rows, seed)) for seed in range(streams)]
    return [(keys[s], sensor_record(START_S + r, per_stream[s][r]), []) for r in range(rows) for s in range(streams)]


# ---------------------------------------------------------------------------------------------- serve, in-process


class ProbeRegistry(CollectorRegistry):
    """A registry that also keeps its collectors by metric name, so that a few counters are cheap to read."""

    def __init__(self) -> None:
        super().__init__()
        self._by_name: dict[str, Collector] = {}

    def register(self, collector: Collector) -> None:
        super().register(collector)
        describe = getattr(collector, "describe", None)  # metrics have it; custom collectors may not
        for metric in describe() if describe is not None else ():
            self._by_name[metric.name] = collector

    def total(self, name: str) -> float:
        """The sum of a counter's `_total` samples over all its labels (0 before serve registered it)."""
        collector = self._by_name.get(name)
        if collector is None:
            return 0.0
        return sum(s.value for m in collector.collect() for s in m.samples if s.name == name + "_total")


class ServeThread:
    """`ae_monitor.serve.app.serve` in a thread of this process, stopped (drained) on exit."""

    def __init__(self, config: Config, profile: cProfile.Profile | None = None) -> None:
        self.registry = ProbeRegistry()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(config, profile), name="serve", daemon=True)

    def _run(self, config: Config, profile: cProfile.Profile | None) -> None:
        try:
            if profile is None:
                serve(config, registry=self.registry, stop=self._stop)
            else:
                profile.runcall(serve, config, registry=self.registry, stop=self._stop)
        except BaseException as exc:  # reported by the watcher
            self.error = exc

    def __enter__(self) -> ServeThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            print("warning: the serve thread did not stop within 60 s", file=sys.stderr)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"serve failed: {self.error!r}") from self.error
        if not self._thread.is_alive():
            raise RuntimeError("serve stopped unexpectedly")


@dataclass(frozen=True)
class Span:
    """From the first record counted to the last window scored: wall and CPU seconds of this process."""

    wall_s: float
    cpu_s: float

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s


def machine_busy_s() -> float:
    """CPU seconds all processes of this machine have used so far (every core, from /proc/stat); NaN elsewhere."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def watch(handle: ServeThread, *, windows: int, timeout_s: float) -> Span:
    """Poll serve's counters every few ms until `windows` windows are scored; time from the first record."""
    first: tuple[float, float] | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        handle.check()
        now, cpu = time.perf_counter(), process_cpu_s()
        if first is None and handle.registry.total("ae_monitor_records") > 0:
            first = (now, cpu)
        if first is not None and handle.registry.total("ae_monitor_windows_scored") >= windows:
            return Span(now - first[0], cpu - first[1])
        time.sleep(POLL_S)
    got = handle.registry.total("ae_monitor_windows_scored")
    raise RuntimeError(f"serve scored {got:.0f} of {windows} windows in {timeout_s:.0f} s")


def serve_config(bootstrap: str, topic: str, bundle: Path, tag: str, client: str = "kafka-python",
                 **sections: Mapping[str, Any]) -> Config:  # fmt: skip
    """Production settings (scoring, polling, commits, drift: defaults), every Kafka sink but scores; `sections`
    adds settings to config sections (e.g. streams={...})."""
    settings: dict[str, Any] = {
        "kafka": {"bootstrap_servers": [bootstrap], "client": client},
        "source": {"topics": [topic], "group_id": f"bench-{tag}", "start_from": "earliest"},
        "routes": [{"match": "*", "bundle_path": str(bundle)}],
        "sinks": {"kafka": {"alerts_topic": f"{topic}-alerts", "dead_letter_topic": f"{topic}-dead",
                            "state_topic": f"{topic}-state"}},
        "service": {"http_port": 0, "log_format": "text"},
        "alerting": ALERTING,
    }  # fmt: skip
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return config_from_dict(settings)


def output_topics(topic: str) -> list[str]:
    return [f"{topic}-alerts", f"{topic}-dead", f"{topic}-state"]


# ---------------------------------------------------------------------------------------- 1 + 2: ceiling and serve


def run_throughput(bootstrap: str, topics: Topics, bundle: Path, settings: Settings, figures: Figures,
                   profile: Path | None, client: str = "kafka-python") -> tuple[float, float]:  # fmt: skip
    """Ceiling and serve on the same topic; returns both rates (msg/s)."""
    loaded = load_bundle(bundle)
    channels, window = loaded.extractor.group_names, loaded.features.sensor.window_samples
    rows = max(1, settings.records // settings.streams)
    n = rows * settings.streams
    topic = topics.create("sensor")
    messages = throughput_messages(channels, settings.streams, rows)
    size = sum(len(v) for _, v, _ in messages) / n
    produce_rate = produce(bootstrap, topic, messages)
    del messages
    gc.collect()
    figures.add(Row(ROW_PRODUCE, produce_rate, "msg/s", note=f"{n:,} records of {size:.0f} B"), records=n)
    max_poll = config_source_max_poll()
    ceiling, ceiling_s = consume_ceiling(bootstrap, topic, n, max_poll, client)
    figures.add(Row(ROW_CEILING, ceiling, "msg/s", note=f"{n:,} in {ceiling_s:.2f} s, max_poll_records {max_poll}"),
                msg_per_s=ceiling, seconds=ceiling_s, records=n, max_poll_records=max_poll)  # fmt: skip
    expected = settings.streams * max(0, rows - window + 1)
    config = serve_config(bootstrap, topic, bundle, f"tp-{client}-{topics.run_id}", client)
    topics.forget_later(*output_topics(topic))
    span = serve_span(config, expected, None if profile is None else profile / "serve-sensor.pstats")
    rate = n / span.wall_s
    ratio = rate / ceiling
    figures.add(Row(ROW_SERVE, rate, "msg/s", f">= {GOAL_SERVE_RATIO:.0%} of ceiling", f"{ratio:.1%}",
                    ratio >= GOAL_SERVE_RATIO, f"{n:,} in {span.wall_s:.2f} s, {span.cores:.2f} cores busy"),
                msg_per_s=rate, seconds=span.wall_s, cpu_seconds=span.cpu_s, windows=expected,
                ratio_to_ceiling=ratio, profiled=profile is not None)  # fmt: skip
    return ceiling, rate


def config_source_max_poll() -> int:
    """serve's `source.max_poll_records` default: the ceiling consumer polls in batches of the same size."""
    return KafkaSourceConfig(topics=("x",)).max_poll_records


def serve_span(config: Config, windows: int, profile_out: Path | None) -> Span:
    profile = cProfile.Profile() if profile_out is not None else None
    with ServeThread(config, profile) as handle:
        span = watch(handle, windows=windows, timeout_s=300)
    if profile is not None and profile_out is not None:
        profile_out.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(profile_out))
        print(f"\nprofile of the serve thread (profiled run: its rate is not comparable) -> {profile_out}")
        pstats.Stats(str(profile_out)).sort_stats("tottime").print_stats(20)
    return span


# ------------------------------------------------------------------------------------------------- 3: latency


@dataclass
class LatencyPlan:
    """Per-stream rows of a latency run: values and fault onsets; filled while sending: the send time of every row,
    and the broker's append time of every triggering row (the k-th row of a fault)."""

    keys: list[bytes]
    values: list[list[bytes]]
    onsets: list[set[int]]
    k: int
    sent_ts: list[list[float]] = field(default_factory=list)
    appended: dict[tuple[int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sent_ts = self.sent_ts or [[] for _ in self.keys]

    def triggers(self) -> dict[tuple[int, int], int]:
        """(stream, onset row) -> the row that completes the k-th window containing the fault, for rows sent."""
        return {(s, o): o + self.k - 1 for s, onsets in enumerate(self.onsets) for o in onsets
                if o + self.k - 1 < len(self.sent_ts[s])}  # fmt: skip


def fault_onsets(stream: int, rows: int) -> set[int]:
    if stream % FAULTY_EVERY:
        return set()
    first = FAULT_FIRST_ROW + (stream * 37) % FAULT_PERIOD
    return set(range(first, rows, FAULT_PERIOD))


def latency_plan(channels: tuple[str, ...], streams: int, rows: int, k: int) -> LatencyPlan:
    values, onsets = [], []
    for s in range(streams):
        data = normal_rows(channels, rows, 1000 + s)
        starts = fault_onsets(s, rows)
        for onset in starts:
            data[onset : onset + FAULT_ROWS, FAULT_CHANNEL % len(channels)] += FAULT_OFFSET
        values.append(values_json(channels, data))
        onsets.append(starts)
    return LatencyPlan(stream_keys(streams), values, onsets, k)


class PacedProducer:
    """The latency runs' load generator: scripts/kafka/PacedProducer.java, the Java Kafka producer (kafka-python could
    not offer the goal's rate on this machine next to the daemon). Started, connected and warmed up (the plan sent
    once to `warmup_topic`) before the run; `run`
    sends at `rate` per second for `duration_s`, `ts` = wall time at each send, and fills `plan` with the send times
    and the broker's append times of the rows that trigger alerts (the topic stamps LogAppendTime)."""

    def __init__(self, bootstrap: str, topic: str, plan: LatencyPlan, rate: float, duration_s: float,
                 workdir: Path, warmup_topic: str) -> None:  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        self._plan, self._out = plan, workdir / "paced-producer.out"
        plan_file = workdir / "paced-producer.plan"
        streams, rows = len(plan.keys), len(plan.values[0])
        wanted = {(s, o + plan.k - 1) for s, onsets in enumerate(plan.onsets) for o in onsets}
        with plan_file.open("w", encoding="utf-8") as f:
            for i in range(streams * rows):
                s, r = i % streams, i // streams
                f.write(f"{plan.keys[s].decode()}\t{plan.values[s][r].decode()}\t{int((s, r) in wanted)}\n")
        classes = compile_java(PACED_PRODUCER, workdir / "classes")
        command = ["java", "-Xmx2g", "-cp", f"{classes}{os.pathsep}{KAFKA_LIBS}/*", "PacedProducer", bootstrap,
                   topic, str(plan_file), str(self._out), repr(rate), repr(duration_s), warmup_topic]  # fmt: skip
        self._log = (workdir / "paced-producer.log").open("w", encoding="utf-8")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True)  # fmt: skip
        self._expect("ready")

    def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith(word):
            self.proc.kill()
            self._log.flush()
            log = Path(self._log.name).read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(f"PacedProducer said {line!r}, not {word!r}; its log ({self._log.name}):\n{log}")
        return line

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def run(self) -> int:
        """Send; returns how many records were sent (fewer than planned when the producer fell behind)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        sent = int(self._expect("done").split()[1])
        streams = len(self._plan.keys)
        for i, line in enumerate(self._out.read_text(encoding="utf-8").splitlines()):
            ts, append_ms = line.split("\t")
            s, r = i % streams, i // streams
            self._plan.sent_ts[s].append(float(ts))
            if int(append_ms) >= 0:
                self._plan.appended[(s, r)] = int(append_ms) / 1000
        return sent

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)  # waits, and closes the pipes
        self._log.close()


def compile_java(source: Path, classes: Path) -> Path:
    """`javac` `source` against the broker's jars (scripts/kafka/libs) into `classes`, once."""
    if not (classes / f"{source.stem}.class").exists():
        classes.mkdir(parents=True, exist_ok=True)
        subprocess.run(["javac", "-cp", f"{KAFKA_LIBS}/*", "-d", str(classes), str(source)], check=True,
                       capture_output=True, text=True)  # fmt: skip
    return classes


def proc_cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has used so far (all its threads), from /proc; NaN where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AlertCollector:
    """Reads the alerts topic in a thread, stamping each message with the wall time it arrived here."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        partition = TopicPartition(topic, 0)
        self._consumer.assign([partition])
        self._consumer.seek_to_beginning(partition)
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=50).values():
                now = time.time()
                self.received.extend((now, json.loads(r.value)) for r in records)

    def __enter__(self) -> AlertCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def firing(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, a) for t, a in list(self.received) if a.get("status") == "firing"]


class ServeProcess:
    """`ae-monitor serve` as a separate process (stderr to a log file), stopped with SIGTERM on exit."""

    def __init__(self, config: Config, workdir: Path, *, trace: Path | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "latency-serve.toml"
        path.write_text(dump_config(config), encoding="utf-8")
        self.log = workdir / "latency-serve.log"
        self._log = self.log.open("w", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        command = [sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(path)]
        if trace is not None:  # the same serve, its steps stamped (scripts/serve_traced.py)
            trace.parent.mkdir(parents=True, exist_ok=True)
            env["AE_MONITOR_TRACE"] = str(trace)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            command = [sys.executable, str(TRACED_SERVE), "serve", "--config", str(path)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._log, env=env, cwd=REPO_ROOT)
        self.url = ""

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            lines = [x for x in self.log.read_text().splitlines() if "serving /metrics" in x]
            if lines:
                self.url = lines[0].rsplit(" ", 1)[-1]
                if http_get(self.url + "/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"serve not ready in {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")

    def cpu_s(self) -> float:
        """CPU seconds the serve process has used so far (all its threads)."""
        return proc_cpu_s(self.proc.pid)

    def metric(self, name: str) -> float:
        """The sum of the samples named exactly `name` (over labels) on /metrics; NaN when it does not answer."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        status, text = http_get(self.url + "/metrics")
        if status != 200:
            return float("nan")
        found = [float(x.rsplit(" ", 1)[-1]) for x in text.splitlines() if x.split("{")[0].split(" ")[0] == name]
        return sum(found)


def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@dataclass(frozen=True)
class Latencies:
    """Per fault onset whose triggering record was sent: ms from that record to its firing alert.

    Alerts that never came count with lower bounds (until waiting ended)."""

    append_to_alert_ms: list[float]  # broker append time of the record -> alert received by this process
    send_to_alert_ms: list[float]  # this process's send() call -> alert received (adds the producer's queueing)
    append_to_detection_ms: list[float]  # append time -> the alert's detection_time_s; received alerts only
    expected: int  # fault onsets whose triggering record was sent, less the masked ones
    received: int  # of those, firing alerts received
    masked: int  # fault onsets inside an episode already firing (a false alarm just before): no alert of their own
    unmatched_faulty: int  # firing alerts on faulty streams not starting at a fault onset's first window
    unmatched_normal: int  # firing alerts on streams without faults (false alarms)


@dataclass(frozen=True)
class LatencyRun:
    label: str
    target_rate: float
    send_rate: float
    sent: int
    backlog: float  # records sent but not yet counted by serve when sending ended
    serve_cores: float  # CPU seconds of the serve process per second while sending
    bench_cores: float  # the same for the load generator and this process (alert consumer)
    machine_cores: float  # the same for the whole machine (these two, the broker, anything else running)
    latencies: Latencies
    serve_peak_rss_mb: float = float("nan")  # the serve process's peak resident memory (VmHWM) when sending ended


Onset = tuple[int, int]  # (stream, row)


def match_alerts(plan: LatencyPlan, alerts: list[tuple[float, dict[str, Any]]], *, window: int,
                 waited_until: float) -> Latencies:  # fmt: skip
    """Pair each firing alert with its fault onset: its `event_time_s` is the start of the window ending there.

    A fault onset that falls inside an episode already firing (a false alarm just before it) raises no alert of its
    own: it is counted as masked, not expected."""
    expected = plan.triggers()
    arrived, others = _pair(plan, alerts, window, expected)
    masked = {(s, o) for s, begin, end in others if begin >= 0 for o in plan.onsets[s] if begin <= o < end}
    keys = [key for key in expected if key not in masked or key in arrived]

    def lags(origin: Callable[[Onset], float]) -> list[float]:
        return [1000 * (arrived.get(key, (waited_until, 0.0, ""))[0] - origin(key)) for key in keys]

    def appended(key: Onset) -> float:
        return plan.appended[(key[0], expected[key])]

    def sent(key: Onset) -> float:
        return plan.sent_ts[key[0]][expected[key]]

    detection = [1000 * (arrived[key][1] - appended(key)) for key in keys if key in arrived]
    false_alarms = sum(s < 0 or not plan.onsets[s] for s, _, _ in others)
    return Latencies(lags(appended), lags(sent), detection, len(keys), len(arrived), len(masked - arrived.keys()),
                     len(others) - false_alarms, false_alarms)  # fmt: skip


def _pair(
    plan: LatencyPlan, alerts: list[tuple[float, dict[str, Any]]], window: int, expected: Mapping[Onset, int]
) -> tuple[dict[Onset, tuple[float, float, str]], list[tuple[int, int, int]]]:
    """(onset -> (received, detection time, alert id)) of the firing alerts that match one, and (stream, last row of the
    first window, row after the end) of the other firing episodes (stream -1: unknown)."""  # fmt: skip
    index = {key.decode(): s for s, key in enumerate(plan.keys)}
    rows_of = [{ts: r for r, ts in enumerate(sent)} for sent in plan.sent_ts]
    ends = {a["id"]: a.get("ends_at_s") for _, a in alerts if a.get("status") == "resolved"}
    arrived: dict[Onset, tuple[float, float, str]] = {}
    others: list[tuple[int, int, int]] = []
    for when, alert in (item for item in alerts if item[1].get("status") == "firing"):
        s = index.get(alert["stream"], -1)
        first_row = rows_of[s].get(alert["event_time_s"]) if s >= 0 else None
        key = (s, -1 if first_row is None else first_row + window - 1)
        if key in expected and key not in arrived:
            arrived[key] = (when, alert["detection_time_s"], alert["id"])
        elif s < 0:
            others.append((s, -1, 0))
        else:
            end = ends.get(alert["id"])
            end_row = len(plan.sent_ts[s]) if end is None else bisect.bisect_left(plan.sent_ts[s], end)
            others.append((s, key[1], end_row))
    return arrived, others


def run_latency(bootstrap: str, topics: Topics, bundle: Path, settings: Settings, rate: float, label: str,
                workdir: Path, client: str = "kafka-python", trace: Path | None = None) -> LatencyRun:  # fmt: skip
    """One paced run against a fresh `ae-monitor serve` process on a fresh topic."""
    loaded = load_bundle(bundle)
    rows = int(rate * settings.latency_s) // settings.streams + 1
    plan = latency_plan(loaded.extractor.group_names, settings.streams, rows, int(ALERTING["k"]))
    topic = topics.create(f"latency-{label.lower()}", {"message.timestamp.type": "LogAppendTime"})
    topics.forget_later(*output_topics(topic))
    config = serve_config(bootstrap, topic, bundle, f"lat-{label.lower()}-{client}-{topics.run_id}", client)
    warmup = topics.create(f"latency-{label.lower()}-warmup")
    workdir = workdir / f"{client}"  # each client's files apart (plan, producer and serve logs)
    producer = PacedProducer(bootstrap, topic, plan, rate, settings.latency_s, workdir / f"latency-{label.lower()}",
                             warmup)  # fmt: skip
    try:
        trace_out = None if trace is None else trace / f"latency-{label.lower()}-{client}.jsonl"
        with ServeProcess(config, workdir / f"latency-{label.lower()}", trace=trace_out) as daemon:
            daemon.wait_ready()
            with AlertCollector(bootstrap, f"{topic}-alerts") as collector:
                before = (daemon.cpu_s(), process_cpu_s() + producer.cpu_s(), machine_busy_s())
                sent = producer.run()
                after = (daemon.cpu_s(), process_cpu_s() + producer.cpu_s(), machine_busy_s())
                serve_c, own_c, machine_c = ((b - a) / settings.latency_s for a, b in zip(before, after, strict=True))
                backlog = sent - daemon.metric("ae_monitor_records_total")
                rss_mb = peak_rss_mb(daemon.proc.pid)
                waited_until = wait_for_alerts(collector, plan, daemon, sent, settings.wait_s)
    finally:
        producer.close()
    window = loaded.features.sensor.window_samples
    latencies = match_alerts(plan, list(collector.received), window=window, waited_until=waited_until)
    if trace_out is not None:
        print_breakdown(f"latency {label} ({client}, {rate:,.0f} msg/s)",
                        trace_breakdown(trace_out, plan, list(collector.received), window=window))  # fmt: skip
    return LatencyRun(label, rate, sent / settings.latency_s, sent, backlog, serve_c, own_c, machine_c, latencies,
                      rss_mb)  # fmt: skip


def peak_rss_mb(pid: int) -> float:
    """Process `pid`'s peak resident memory (VmHWM) in MB; NaN where /proc is not readable."""
    return _status_mb(pid, "VmHWM")


def _status_mb(pid: int, field: str) -> float:
    """A memory field of /proc/`pid`/status (kB there) in MB; NaN where it is not readable."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    found = [int(line.split()[1]) for line in lines if line.startswith(f"{field}:")]
    return found[0] / 1024 if found else float("nan")


def wait_for_alerts(collector: AlertCollector, plan: LatencyPlan, daemon: ServeProcess, sent: int,
                    limit_s: float) -> float:  # fmt: skip
    """Wait until every expected alert came, or serve has counted every record sent and 1 s passed, or `limit_s`.

    Returns the wall time waiting ended: an alert that never came took at least until then."""
    expected = len(plan.triggers())
    faulty = {key.decode() for key, onsets in zip(plan.keys, plan.onsets, strict=True) if onsets}
    deadline, caught_up = time.monotonic() + limit_s, float("inf")
    while sum(a["stream"] in faulty for _, a in collector.firing()) < expected and time.monotonic() < deadline:
        if caught_up == float("inf") and daemon.metric("ae_monitor_records_total") >= sent:
            caught_up = time.monotonic()
        if time.monotonic() > caught_up + 1.0:
            break
        time.sleep(0.2)
    time.sleep(0.3)  # stragglers, and false alarms to count
    return time.time()


STAGES = (
    ("append->poll start", "the record waits in the broker or the consumer while serve is busy with earlier steps"),
    ("in poll", "the poll that returned it: waiting for a fetch, and the client unpacking the records"),
    ("poll->detection", "decoding, windowing, forward pass, alert decision of its micro-batch"),
    ("detection->submit", "the rest of the batch's delivery until the alert is handed to the producer"),
    ("submit->acked", "serve's producer (linger, acks=all) until the broker acknowledged the alert"),
    ("acked->received", "broker -> this process's consumer of the alerts topic (the benchmark's side)"),
)


def trace_breakdown(trace: Path, plan: LatencyPlan, alerts: list[tuple[float, dict[str, Any]]], *,
                    window: int) -> dict[str, Any]:  # fmt: skip
    """Where each alert's append -> alert time went, from serve's step trace (scripts/serve_traced.py): per
    stage, the ms of every alert matched to a fault onset, plus the micro-batch sizes and durations and GC pauses."""
    events = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    polls = sorted((e[1], e[2], e[3]) for e in events if e[0] == "poll")
    poll_ends = [end for _, end, _ in polls]
    submits = {aid.split(":")[0]: e[1] for e in events if e[0] == "submit" for aid in e[3] if aid.endswith("firing")}
    acks = {aid.split(":")[0]: e[2] for e in events if e[0] == "ack" for aid in e[3] if aid.endswith("firing")}
    arrived, _ = _pair(plan, alerts, window, plan.triggers())
    expected = plan.triggers()
    stages: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    batch_rows: list[float] = []
    for key, (received, detection, alert_id) in arrived.items():
        submit, ack = submits.get(alert_id), acks.get(alert_id)
        if submit is None or ack is None:
            continue
        i = bisect.bisect_right(poll_ends, detection) - 1  # the poll whose micro-batch decided the alert
        start, end, rows = polls[i]
        appended = plan.appended[(key[0], expected[key])]
        for name, ms in zip(stages, (start - appended, end - start, detection - end, submit - detection,
                                     ack - submit, received - ack), strict=True):  # fmt: skip
            stages[name].append(1000 * ms)
        batch_rows.append(rows)
    busy = [e for e in events if e[0] == "process"]
    gcs = [1000 * (e[2] - e[1]) for e in events if e[0] == "gc"]
    return {
        "stages_ms": stages,
        "alerts": len(batch_rows),
        "alert_batch_rows": batch_rows,
        "batch_rows": [p[2] for p in polls if p[2]],
        "process_ms": [1000 * (e[2] - e[1]) for e in busy],
        "gc_ms": gcs,
        "gc_full": sum(1 for e in events if e[0] == "gc" and e[3] == 2),
    }


def print_breakdown(title: str, found: dict[str, Any]) -> None:
    def q(values: Sequence[float]) -> str:
        return " / ".join(f"{percentile(values, p):7.1f}" for p in (50, 90, 99, 100))

    print(f"\n{title}: where append -> alert went, {found['alerts']} alerts (ms: p50 / p90 / p99 / max)")
    for name, meaning in STAGES:
        print(f"  {name:<20} {q(found['stages_ms'][name])}   {meaning}")
    print(f"  {'micro-batch rows':<20} {q(found['batch_rows'])}   all non-empty polls (alerts' batches: "
          f"{q(found['alert_batch_rows'])})")  # fmt: skip
    print(f"  {'process per batch':<20} {q(found['process_ms'])}   engine + deliver (decoding is in the poll)")
    print(f"  {'gc pauses':<20} {q(found['gc_ms'])}   {len(found['gc_ms'])} collections, {found['gc_full']} full")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report_latency(figures: Figures, run: LatencyRun, *, goal: bool) -> None:
    result, name = run.latencies, f"latency {run.label}"
    cores = (
        f"cores busy: serve {run.serve_cores:.2f}, producer + this process {run.bench_cores:.2f}, machine "
        f"{run.machine_cores:.2f} of {os.cpu_count()}; serve peak RSS {run.serve_peak_rss_mb:,.0f} MB"
    )
    figures.add(Row(f"{name}: send rate", run.send_rate, "msg/s", note=f"target {run.target_rate:,.0f}; serve "
                    f"{max(0.0, run.backlog):,.0f} behind at the end; {cores}"),
                msg_per_s=run.send_rate, target_msg_per_s=run.target_rate, records=run.sent,
                backlog_at_end=run.backlog, serve_cores=run.serve_cores, bench_cores=run.bench_cores,
                machine_cores=run.machine_cores, serve_peak_rss_mb=run.serve_peak_rss_mb)  # fmt: skip
    missing = result.expected - result.received
    bound = f", {missing} never came (lower bounds)" if missing else ""
    p50, p99 = percentile(result.append_to_alert_ms, 50), percentile(result.append_to_alert_ms, 99)
    note = f"{result.received} of {result.expected} fault onsets alerted{bound}; {result.masked} masked"
    figures.add(Row(f"{name}: p50 append->alert", p50, "ms", note=note), ms=p50, lower_bound=bool(missing))
    top = max(result.append_to_alert_ms, default=float("nan"))
    note = f"max {top:,.1f} ms; false alarms {result.unmatched_normal}, other {result.unmatched_faulty}"
    row = Row(f"{name}: p99 append->alert", p99, "ms", note=note)
    if goal:
        row.goal, row.ratio = f"< {GOAL_P99_MS:.0f} ms", f"{p99 / GOAL_P99_MS:.2f} of goal"
        row.passed = result.expected > 0 and not missing and p99 < GOAL_P99_MS
    figures.add(row, ms=p99, max_ms=top, expected=result.expected, received=result.received,
                false_alarms=result.unmatched_normal, other_firing_on_faulty=result.unmatched_faulty,
                masked=result.masked, lower_bound=bool(missing))  # fmt: skip
    s50, s99 = percentile(result.send_to_alert_ms, 50), percentile(result.send_to_alert_ms, 99)
    note = f"p50 {s50:,.1f} ms; from the producer's send() call (adds its queueing)"
    figures.add(Row(f"{name}: p99 send->alert", s99, "ms", note=note), ms=s99, p50_ms=s50)
    d50, d99 = percentile(result.append_to_detection_ms, 50), percentile(result.append_to_detection_ms, 99)
    note = f"p50 {d50:,.1f} ms; to serve's detection_time_s (alerts received)"
    figures.add(Row(f"{name}: p99 append->detection", d99, "ms", note=note), ms=d99, p50_ms=d50)


# --------------------------------------------------------------------------------------------------- 4: audio


def audio_messages(streams: int, seconds: int) -> list[Message]:
    """`seconds` 1 s s16le chunks per stream (a looped 10 s synthetic clip each), streams round-robin."""
    clips = []
    for s in range(streams):
        clip = synthetic_audio(min(10.0, seconds), np.random.default_rng(100 + s))
        clips.append(np.clip(np.round(clip * 32768), -32768, 32767).astype("<i2"))
    out = []
    for second in range(seconds):
        for s, clip in enumerate(clips):
            chunk = clip[(second % (len(clip) // SAMPLE_RATE)) * SAMPLE_RATE :][:SAMPLE_RATE]
            headers = [("format", b"s16le"), ("sample_rate", str(SAMPLE_RATE).encode()), ("channels", b"1"),
                       ("ts", repr(START_S + second).encode())]  # fmt: skip
            out.append((f"fan-{s:02d}".encode(), chunk.tobytes(), headers))
    return out


def audio_windows(bundle: Bundle, seconds: int) -> int:
    """Windows one stream of `seconds` 1 s chunks yields in serve (no end flush): its vectors, grouped."""
    stream = bundle.extractor.stream()
    chunk = np.zeros(SAMPLE_RATE, dtype=np.float32)
    vectors = sum(len(stream.push(chunk)) for _ in range(seconds))
    size, hop = window_plan(bundle.features)
    return 0 if vectors < size else (vectors - size) // hop + 1


def run_audio(bootstrap: str, topics: Topics, bundle: Path, settings: Settings, figures: Figures,
              profile: Path | None, client: str = "kafka-python", trace: Path | None = None) -> None:  # fmt: skip
    """Audio through serve, and the same audio through the offline path in this process (the reference: what serve
    adds is the difference). With `trace`, both are split into stages by CPU time (`audio_stages`)."""
    topic = topics.create("audio")
    messages = audio_messages(settings.audio_streams, settings.audio_seconds)
    produce(bootstrap, topic, messages)
    loaded = load_bundle(bundle)
    traced = audio_probes(loaded) if trace is not None else None
    offline_cpu_s, offline_stages = offline_audio_cpu_s(loaded, messages, settings.audio_streams, traced)
    del messages
    gc.collect()
    windows = settings.audio_streams * audio_windows(loaded, settings.audio_seconds)
    config = serve_config(bootstrap, topic, bundle, f"audio-{client}-{topics.run_id}", client,
                          source={"max_partition_fetch_bytes": AUDIO_FETCH_BYTES})  # fmt: skip
    topics.forget_later(*output_topics(topic))
    if traced is not None:
        traced.EVENTS.clear()
    span = serve_span(config, windows, None if profile is None else profile / "serve-audio.pstats")
    serve_stages = traced.stage_totals(traced.EVENTS) if traced is not None else {}
    audio_s = float(settings.audio_streams * settings.audio_seconds)
    cores = max(1.0, span.cores)
    x_rt = audio_s / span.wall_s / cores
    offline_x = audio_s / offline_cpu_s
    figures.add(Row(ROW_AUDIO, x_rt, "x", f">= {GOAL_AUDIO_X:,.0f}x", f"{x_rt / GOAL_AUDIO_X:.2f} of goal",
                    x_rt >= GOAL_AUDIO_X, f"{audio_s:,.0f} s of audio in {span.wall_s:.2f} s, "
                    f"{span.cores:.2f} cores busy; {audio_s / span.cpu_s:,.0f}x per CPU second; the offline path "
                    f"in this process {offline_x:,.0f}x per CPU second"),
                x_realtime_per_core=x_rt, x_realtime_wall=audio_s / span.wall_s, audio_seconds=audio_s,
                seconds=span.wall_s, cpu_seconds=span.cpu_s, cores_counted=cores, windows=windows,
                offline_cpu_seconds=offline_cpu_s, offline_x_realtime_per_cpu_s=offline_x,
                serve_stages=serve_stages, offline_stages=offline_stages)  # fmt: skip
    if traced is not None:
        print_audio_stages(f"audio ({client})", audio_s, span, serve_stages, offline_cpu_s, offline_stages)


# As configs/audio-dcase.toml sets it: 1 MiB (the clients' default) holds ~30 one-second chunks, and serve with
# kafka-python waited for a fetch every ~30 chunks (8 MiB: +24 % x real time per core, docs/serve.md).
AUDIO_FETCH_BYTES = 8 << 20

AUDIO_STAGES = (
    ("poll", "serve's poll: the client's fetch and unpacking, waits for a fetch, and decoding (below)"),
    ("decode", "  of which decoding the records (PCM to float, headers)"),
    ("process", "the engine's micro-batch: features, forward pass, windows, alert decisions, bookkeeping"),
    ("features", "  of which log-mel features (the extractor's stream push)"),
    ("forward", "  of which Scorer.score (forward passes, squared errors, band means)"),
    ("aggregate", "  of which WindowAggregator.push (window scores and shares)"),
    ("deliver", "alerts, scores, state and codes handed to the sinks"),
    ("commit", "offset commits"),
    ("housekeeping", "eviction, lag gauges, reload checks"),
)


def audio_probes(bundle: Bundle) -> ModuleType:
    """scripts/serve_traced.py installed in this process (once) with probes on the audio path's own stages."""
    traced = sys.modules.get("serve_traced")
    if traced is None:
        from ae_monitor import scoring
        from ae_monitor.sources import kafka as kafka_source

        spec = importlib.util.spec_from_file_location("serve_traced", TRACED_SERVE)
        assert spec is not None, TRACED_SERVE
        assert spec.loader is not None, TRACED_SERVE
        traced = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = traced
        spec.loader.exec_module(traced)
        traced.install()
        traced.probe("decode", kafka_source, "decode_batch")
        traced.probe("features", type(bundle.extractor.stream()), "push")
        traced.probe("forward", scoring.Scorer, "score")
        traced.probe("aggregate", scoring.WindowAggregator, "push")
    return traced


def offline_audio_cpu_s(bundle: Bundle, messages: Sequence[Message], streams: int,
                        traced: ModuleType | None) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """CPU seconds the offline path (`jobs.data.score_signal`, as `ae-monitor score` runs it) takes for the same
    audio, each stream as one signal of its chunks; with `traced`, its stages too."""
    from ae_monitor.jobs.data import score_signal
    from ae_monitor.scoring import scorer_for

    signals = []
    for s in range(streams):
        pcm = np.concatenate([np.frombuffer(v, dtype="<i2") for k, v, _ in messages[s::streams]])
        y = (pcm / 32768.0).astype(np.float32)
        signals.append(Signal(f"fan-{s:02d}", y, np.arange(len(y), dtype=np.float64) / SAMPLE_RATE, ()))
    scorer = scorer_for(bundle, batch_size=4096)  # the offline jobs' batch (jobs.data)
    if traced is not None:
        traced.EVENTS.clear()
    started = time.thread_time()
    for signal_ in signals:
        score_signal(bundle, scorer, signal_)
    used = time.thread_time() - started
    return used, (traced.stage_totals(traced.EVENTS) if traced is not None else {})


def print_audio_stages(title: str, audio_s: float, span: Span, serve_stages: Mapping[str, Any], offline_cpu_s: float,
                       offline_stages: Mapping[str, Any]) -> None:  # fmt: skip
    print(f"\n{title}: where serve's time goes, {audio_s:,.0f} s of audio (serve's thread; ms per audio second)")
    print(f"  {'stage':<14} {'calls':>7} {'wall':>8} {'CPU':>8} {'offline CPU':>12}")
    for name, meaning in AUDIO_STAGES:
        calls, wall, cpu = serve_stages.get(name, (0, 0.0, 0.0))
        off = offline_stages.get(name, (0, 0.0, float("nan")))[2]
        print(f"  {name:<14} {calls:>7,} {1000 * wall / audio_s:>8.3f} {1000 * cpu / audio_s:>8.3f} "
              f"{1000 * off / audio_s:>12.3f}   {meaning}")  # fmt: skip
    print(
        f"  {'whole run':<14} {'':>7} {1000 * span.wall_s / audio_s:>8.3f} {1000 * span.cpu_s / audio_s:>8.3f} "
        f"{1000 * offline_cpu_s / audio_s:>12.3f}   serve: this process, every thread; offline: score_signal"
    )


# --------------------------------------------------------------------------------------------------- 5: memory

MEMORY_EVICTION_S = 5.0  # streams.idle_eviction_s of the memory run (default 3,600 s): eviction within the run


def rss_mb(pid: int) -> float:
    """Process `pid`'s resident memory now (VmRSS) in MB; NaN where /proc is not readable."""
    return _status_mb(pid, "VmRSS")


def wait_metric(daemon: ServeProcess, name: str, done: Callable[[float], bool], timeout_s: float) -> float:
    """Poll serve's /metrics until `done(value of name)`; returns the last value (the caller judges a timeout)."""
    deadline = time.monotonic() + timeout_s
    value = daemon.metric(name)
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = daemon.metric(name)
    return value


def run_memory(bootstrap: str, topics: Topics, bundle: Path, settings: Settings, figures: Figures, workdir: Path,
               client: str = "kafka-python") -> None:  # fmt: skip
    """serve's RSS at rest, with `settings.memory_streams` active streams, and after they were evicted as idle."""
    loaded = load_bundle(bundle)
    channels, window = loaded.extractor.group_names, loaded.features.sensor.window_samples
    streams = settings.memory_streams
    topic = topics.create("memory")
    topics.forget_later(*output_topics(topic))
    config = serve_config(
        bootstrap,
        topic,
        bundle,
        f"mem-{client}-{topics.run_id}",
        client,
        streams={"max_streams": max(streams, 10_000), "idle_eviction_s": MEMORY_EVICTION_S},
    )
    # One window per stream (`window` rows each), stream ids that the other parts do not use.
    rows = [values_json(channels, normal_rows(channels, window, seed)) for seed in range(min(streams, 50))]
    messages = [(f"machine-{s:05d}".encode(), sensor_record(START_S + r, rows[s % len(rows)][r]), [])
                for r in range(window) for s in range(streams)]  # fmt: skip
    with ServeProcess(config, workdir / f"memory-{client}") as daemon:
        daemon.wait_ready()
        time.sleep(3.0)  # start-up's garbage settles; what serve holds while it waits for records
        rest = rss_mb(daemon.proc.pid)
        produce(bootstrap, topic, messages)
        counted = wait_metric(daemon, "ae_monitor_records_total", lambda v: v >= len(messages), 120)
        time.sleep(1.0)
        active = daemon.metric("ae_monitor_streams_active")
        loaded_mb, peak = rss_mb(daemon.proc.pid), peak_rss_mb(daemon.proc.pid)
        left = wait_metric(daemon, "ae_monitor_streams_active", lambda v: v == 0, MEMORY_EVICTION_S + 30)
        time.sleep(2 * 1.0)  # the housekeeping after the eviction (gc + malloc_trim) has run
        evicted = rss_mb(daemon.proc.pid)
    added, returned = loaded_mb - rest, loaded_mb - evicted
    figures.add(Row(ROW_RSS_REST, rest, "MB", f"<= {GOAL_RSS_REST_MB:.0f} MB", f"{rest / GOAL_RSS_REST_MB:.2f} of goal",
                    rest <= GOAL_RSS_REST_MB, "torch backend, one sensor bundle, production sinks, ready + 3 s"),
                mb=rest)  # fmt: skip
    figures.add(Row(ROW_RSS_STREAMS, added, "MB", f"<= +{GOAL_RSS_STREAMS_MB:.0f} MB for 10k",
                    f"{added / GOAL_RSS_STREAMS_MB * 10_000 / streams:.2f} of goal",
                    added * 10_000 / streams <= GOAL_RSS_STREAMS_MB and active >= streams,
                    f"{active:,.0f} streams active of {streams:,}, {counted:,.0f} records counted; RSS "
                    f"{loaded_mb:,.0f} MB (peak {peak:,.0f})"),
                mb=added, rss_mb=loaded_mb, peak_mb=peak, streams=streams, streams_active=active,
                records=len(messages), records_counted=counted)  # fmt: skip
    figures.add(Row(ROW_RSS_EVICTED, returned, "MB", "> 0 MB", f"{returned / added:.0%} of added" if added > 0 else "",
                    returned > 0 and left == 0, f"{left:,.0f} streams left after eviction; RSS then "
                    f"{evicted:,.0f} MB"),
                mb=returned, rss_mb=evicted, streams_left=left)  # fmt: skip


# ----------------------------------------------------------------------------------------------------- reporting


def format_value(row: Row) -> str:
    if row.value != row.value:  # NaN: nothing measured
        return "n/a"
    if row.unit == "x":
        return f"{row.value:,.0f}x"
    if row.unit == "times":
        return f"{row.value:.2f}x"
    if row.unit == "ms":
        return f"{row.value:,.1f} ms"
    return f"{row.value:,.0f} {row.unit}"


def verdict(row: Row) -> str:
    return "" if row.passed is None else ("PASS" if row.passed else "FAIL")


def print_table(rows: Sequence[Row]) -> None:
    header = f"{'figure':<32} {'value':>14}  {'goal':<20} {'ratio':>12}  {'':4}  note"
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        print(f"{row.name:<32} {format_value(row):>14}  {row.goal:<20} {row.ratio:>12}  {verdict(row):4}  {row.note}")


LEGEND = """\
latency A runs at half the ceiling (the goal), B at half serve's rate above; one fresh `ae-monitor serve` process
  each. append->alert: broker append time (LogAppendTime) of the record that completed the firing window -> the
  alert received by this process's consumer of the alerts topic; send->alert: from this process's send() call
  instead; append->detection: to the alert's detection_time_s. Expected alerts that never came count as lower
  bounds; "masked": fault onsets inside an episode already firing; "other": firing alerts on faulty streams that
  start at no fault onset.
audio: x real time per core = audio s / wall s / max(1, CPU s of this process / wall s), serve in a thread here,
  torch 1 thread.
"""


# The side-by-side table: (label, the row it reads, how to show it). "%" shows the serve row's ratio to its ceiling.
SIDE_BY_SIDE = (
    ("ceiling: consume + json.loads", ROW_CEILING, ""),
    ("serve: sensor records", ROW_SERVE, ""),
    ("serve / its client's ceiling", ROW_SERVE, "%"),
    ("serve / kafka-python's serve", ROW_SPEEDUP, ""),
    ("p50 append->alert, half the ceiling", "latency A: p50 append->alert", ""),
    ("p99 append->alert, half the ceiling", "latency A: p99 append->alert", ""),
    ("p99 append->alert, half serve's rate", "latency B: p99 append->alert", ""),
    ("audio: x real time per core", ROW_AUDIO, ""),
    ("serve RSS at rest", ROW_RSS_REST, ""),
    ("RSS added by the active streams", ROW_RSS_STREAMS, ""),
    ("RSS returned after eviction", ROW_RSS_EVICTED, ""),
)


def side_by_side(figures: Figures, clients: Sequence[str]) -> list[dict[str, Any]]:
    """Each client's figures in one line per figure: value, goal and verdict per client, and the ratio of the
    later clients' values to the first's."""
    by_name = {row.name: row for row in figures.rows}
    lines = []
    for label, base, show in SIDE_BY_SIDE:
        found = [by_name.get(base + client_suffix(client, clients)) for client in clients]
        if not any(found):
            continue
        ratio_of = "ratio_to_ceiling" if show == "%" else ""
        values = [float("nan") if row is None else (figures.details[row.name][ratio_of] if ratio_of else row.value)
                  for row in found]  # fmt: skip
        texts = ["n/a" if row is None else (f"{value:.1%}" if show == "%" else format_value(row))
                 for row, value in zip(found, values, strict=True)]  # fmt: skip
        goal = f">= {GOAL_SERVE_RATIO:.0%}" if show == "%" else next((r.goal for r in found if r and r.goal), "")
        passed = [None if row is None else (value >= GOAL_SERVE_RATIO if show == "%" else row.passed)
                  for row, value in zip(found, values, strict=True)]  # fmt: skip
        ratios = [value / values[0] if values[0] and values[0] == values[0] else float("nan") for value in values[1:]]
        lines.append({"figure": label, "values": dict(zip(clients, values, strict=True)), "texts": texts,
                      "goal": goal, "passed": dict(zip(clients, passed, strict=True)), "ratios": ratios})  # fmt: skip
    return lines


def print_side_by_side(lines: Sequence[dict[str, Any]], clients: Sequence[str]) -> None:
    def mark(passed: bool | None) -> str:
        return "" if passed is None else (" PASS" if passed else " FAIL")

    ratio_heads = [f"{c} / {clients[0]}" for c in clients[1:]]
    header = f"{'figure':<38}" + "".join(f" {c:>22}" for c in clients) + "".join(f" {h:>24}" for h in ratio_heads)
    print(f"\nclients side by side\n{header}  goal\n{'-' * (len(header) + 24)}")
    for line in lines:
        cells = [text + mark(line["passed"][c]) for text, c in zip(line["texts"], clients, strict=True)]
        ratios = ["n/a" if r != r else f"{r:.2f}x" for r in line["ratios"]]
        print(f"{line['figure']:<38}" + "".join(f" {c:>22}" for c in cells) + "".join(f" {r:>24}" for r in ratios)
              + f"  {line['goal']}")  # fmt: skip


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(out: Path, figures: Figures, env: dict[str, Any], settings: Settings,
               clients: Sequence[str] = CLIENTS[:1]) -> None:  # fmt: skip
    data = {
        "clients": list(clients),
        "side_by_side": side_by_side(figures, clients),
        "environment": env,
        "settings": asdict(settings),
        "goals": {
            "serve_ratio": GOAL_SERVE_RATIO,
            "librdkafka_speedup": GOAL_SPEEDUP,
            "p99_ms": GOAL_P99_MS,
            "audio_x_realtime_per_core": GOAL_AUDIO_X,
            "rss_rest_mb": GOAL_RSS_REST_MB,
            "rss_10k_streams_mb": GOAL_RSS_STREAMS_MB,
        },
        "rows": [asdict(row) for row in figures.rows],
        "details": figures.details,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(data), indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nfigures written to {out}")


# ---------------------------------------------------------------------------------------------------------- main


def run_all(args: argparse.Namespace, settings: Settings, workdir: Path, figures: Figures) -> None:
    with kafka_broker(args.bootstrap) as bootstrap:
        topics = Topics(bootstrap)
        try:
            parts, clients = args.parts, args.client
            sensor = args.bundle or train_sensor_bundle(workdir, settings)
            # Each part runs with every client in turn before the next part, so that the clients' figures are taken
            # minutes apart, not a whole benchmark apart; rows of the clients after the first are marked [client].
            runs: dict[str, list[tuple[str, float, bool]]] = {}
            served_by: dict[str, float] = {}
            for client in clients if "throughput" in parts else ():
                figures.suffix = client_suffix(client, clients)
                ceiling, served = run_throughput(bootstrap, topics, sensor, settings, figures, args.profile, client)
                runs[client] = [("A", settings.latency_rate or ceiling / 2, True), ("B", served / 2, False)]
                served_by[client] = served
            report_speedup(figures, served_by, clients)
            if "latency" in parts:
                latency_bundle = with_sample_period(sensor, workdir / "latency-bundle", LATENCY_SAMPLE_PERIOD_S)
                for label in "AB":
                    for client in clients:
                        figures.suffix = client_suffix(client, clients)
                        default = [("A", settings.latency_rate, True)] if settings.latency_rate is not None else []
                        for _, rate, goal in (r for r in runs.get(client, default) if r[0] == label):
                            try:
                                run = run_latency(bootstrap, topics, latency_bundle, settings, rate, label, workdir,
                                                  client, args.trace)  # fmt: skip
                            except RuntimeError as exc:  # one failed run (the load generator) spoils no other part
                                print(f"latency {label} ({client}) failed: {exc}", file=sys.stderr)
                                failed = f"run failed: {str(exc).splitlines()[0]}"
                                figures.add(Row(f"latency {label}: p99 append->alert", float("nan"), "ms", note=failed,
                                                passed=False if goal else None), error=str(exc))  # fmt: skip
                                continue
                            report_latency(figures, run, goal=goal)
            if "audio" in parts:
                audio = make_audio_bundle(workdir)
                for client in clients:
                    figures.suffix = client_suffix(client, clients)
                    run_audio(bootstrap, topics, audio, settings, figures, args.profile, client, args.trace)
            for client in clients if "memory" in parts else ():
                figures.suffix = client_suffix(client, clients)
                run_memory(bootstrap, topics, sensor, settings, figures, workdir, client)
        finally:
            topics.close()


def report_speedup(figures: Figures, served_by: Mapping[str, float], clients: Sequence[str]) -> None:
    """confluent's serve rate over kafka-python's, from the same run (goal: >= 2x)."""
    if "kafka-python" not in served_by or "confluent" not in served_by:
        return
    figures.suffix = client_suffix("confluent", clients)
    speedup = served_by["confluent"] / served_by["kafka-python"]
    figures.add(
        Row(
            ROW_SPEEDUP,
            speedup,
            "times",
            f">= {GOAL_SPEEDUP:.0f}x",
            "",
            speedup >= GOAL_SPEEDUP,
            f"{served_by['confluent']:,.0f} / {served_by['kafka-python']:,.0f} msg/s",
        ),
        ratio=speedup,
    )
    figures.suffix = ""


def client_suffix(client: str, clients: Sequence[str]) -> str:
    return "" if client == clients[0] else f" [{client}]"


def bench(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    env = environment()
    print(f"python {env['python']} on {env['machine']}; torch {env['torch']} ({env['torch_threads']} thread); "
          f"kafka-python CRC32C {env['kafka_crc32c']}; load average {env['load_average_1m_5m']}")  # fmt: skip
    print(f"settings: {settings}")
    figures = Figures()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        run_all(args, settings, workdir, figures)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(figures.rows)
    if len(args.client) > 1:
        print_side_by_side(side_by_side(figures, args.client), args.client)
    print("\n" + LEGEND, end="")
    load1, load5, _ = os.getloadavg()
    print(f"load average at the end: {load1:.2f} (1 min), {load5:.2f} (5 min)")
    if args.json is not None:
        write_json(args.json, figures, env, settings, args.client)
    failed = any(row.passed is False for row in figures.rows)
    return 1 if args.strict and failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """One torch thread (serve sets its own from config as well); the thread count is restored after."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bench(args)
    finally:
        torch.set_num_threads(threads)


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the broker and the daemons are stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


if __name__ == "__main__":
    _exit_on_sigterm()
    sys.exit(main())
