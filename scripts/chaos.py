"""Fault drills for `ae-monitor serve` through a real local Kafka broker: one scenario after another, then a table.

Each scenario runs on fresh topics, a fresh consumer group and a fresh `ae-monitor serve` process (a second one where
the drill kills the first), with production outputs (alerts, dead-letter and alert-state topics, a webhook):

  broker-pause    the broker is SIGSTOPped for --pause-s (30 s) mid-stream, then SIGCONTinued
  broker-restart  the broker is SIGKILLed mid-stream and restarted on the same data dir 10 s later
  serve-kill      serve is SIGKILLed mid-stream; a new serve process of the same group resumes
  sink-outage     the webhook answers 503 for 20 s while faults fire
  stalled-stream  one stream sends one sample, then only its timestamp again, beside normal streams
  fuzz            --fuzz-records (100,000) random undecodable or invalid records between the good ones
  many-streams    --many-streams (10,000) stream ids, a few samples each
  soak            --soak-s (600 s) of records paced at --soak-rate records/s (half of serve's rate here)

Columns (docs/serve.md shows a run):
  faults          faulty streams that fired / faults injected (one fault per faulty stream)
  dup events      alert events seen more than once on the alerts topic (same id and status)
  re-fired        episodes of a faulty stream fired again under a new id (must be 0)
  read again      records consumed more than once, beyond what was uncommitted when the fault struck
  uncommitted     records after the group's committed offsets once serve drained (only open windows may remain)
  dead / bad      dead letters on the dead-letter topic / bad records sent
  RSS MB          serve's resident memory after startup -> at the end

    .venv/bin/python scripts/chaos.py [--quick] [--scenarios a,b] [--bootstrap-dir DIR] [--json OUT]
                                      [--client kafka-python|confluent]

Exit status 1 when a must-hold column fails (re-fired > 0, a fault not alerted, dead letters != bad records, more
uncommitted records than the open windows can hold). `--quick` runs every scenario small (a smoke test, ~2 min).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kafka_broker

from ae_monitor.config import config_from_dict, dump_config
from ae_monitor.jobs.demo import CHANNELS, DEMO_CONFIG, Fault, demo_config, machine, write_csv
from ae_monitor.jobs.train import train_bundle

SCENARIOS = ("broker-pause", "broker-restart", "serve-kill", "sink-outage", "stalled-stream", "fuzz",
             "many-streams", "soak")  # fmt: skip
WINDOW = DEMO_CONFIG["features"]["sensor"]["window_samples"]
MAX_GAP_S = 5.0  # replay.max_gap_s of the drills: a stream silent this long no longer holds commits back
START_S = 1_700_000_000.0


@dataclass
class Settings:
    rows: int = 900  # per stream
    streams: int = 6  # half of them faulty
    pause_s: float = 30.0
    restart_after_s: float = 10.0
    outage_s: float = 20.0
    fuzz_records: int = 100_000
    many_streams: int = 10_000
    soak_s: float = 600.0
    soak_rate: float = 20_000.0
    client: str = "kafka-python"  # kafka.client of the serve processes

    @staticmethod
    def quick() -> Settings:
        return Settings(rows=500, streams=4, pause_s=8, restart_after_s=4, outage_s=6, fuzz_records=2_000,
                        many_streams=1_000, soak_s=15, soak_rate=2_000)  # fmt: skip


@dataclass
class Row:
    scenario: str
    faults: tuple[int, int] = (0, 0)
    duplicates: int = 0
    refired: int = 0
    read_again: int = 0
    uncommitted: int = 0
    open_bound: int = 0
    dead: tuple[int, int] = (0, 0)
    rss_mb: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return (self.refired == 0 and self.faults[0] == self.faults[1] and self.dead[0] == self.dead[1]
                and self.uncommitted <= self.open_bound)  # fmt: skip


# --- the pieces: broker, serve, webhook, data ----------------------------------------------------------------------


class Serve:
    """`ae-monitor serve` as a subprocess; its HTTP port is read from its log."""

    def __init__(self, config_path: Path, log: Path) -> None:
        self.log = log
        self._handle = log.open("w")
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(config_path)],
                                     stdout=subprocess.DEVNULL, stderr=self._handle, env=env)  # fmt: skip
        _wait(lambda: "serving /metrics" in log.read_text() or self.proc.poll() is not None, 60, "serve to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited at startup:\n{log.read_text()[-3000:]}")
        line = next(x for x in log.read_text().splitlines() if "serving /metrics" in x)
        self.url = line.rsplit(" ", 1)[-1]
        self.rss_start = float("nan")  # once ready

    def metric(self, name: str) -> float:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
                text = response.read().decode()
            return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith((name + " ", name + "{")))
        return float("nan")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def rss_mb(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._handle.close()


class Webhook:
    """A local alert receiver that can be told to answer 503."""

    def __init__(self) -> None:
        self.down = False
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(503 if hook.down else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def _streams(settings: Settings, seed: int) -> dict[str, tuple[np.ndarray, bool]]:
    """Per stream: values (rows, 4) and whether it carries a fault (pressure offset over the middle third)."""
    rng = np.random.default_rng(seed)
    third = settings.rows // 3
    out = {}
    for i in range(settings.streams):
        faulty = i % 2 == 1
        fault = Fault("pressure_bar", third, 2 * third, "offset") if faulty else None
        out[f"pump-{i}"] = (machine(settings.rows, rng, fault)[0], faulty)
    return out


def _messages(streams: dict[str, tuple[np.ndarray, bool]], rows: slice) -> list[tuple[bytes, bytes]]:
    """Single-sample records, streams interleaved, for `rows`."""
    out = []
    for row in range(*rows.indices(min(len(v) for v, _ in streams.values()))):
        for name, (values, _) in streams.items():
            body = {"ts": START_S + row, "values": dict(zip(CHANNELS, map(float, values[row]), strict=True))}
            out.append((name.encode(), json.dumps(body).encode()))
    return out


def _bad_records(n: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    makers: list[Callable[[], bytes]] = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))),
        lambda: b'{"ts": "soon", "values": {}}',
        lambda: b'{"ts": 1, "values": {"pressure_bar": "high"}}',
        lambda: b"[1, 2, 3]",
        lambda: b'{"values": {"a": 1}}',
        lambda: json.dumps({"ts": 1, "values": {"x": 1e400}}).encode(),
    ]
    return [(f"fuzz-{rng.randint(0, 50)}".encode(), rng.choice(makers)()) for _ in range(n)]


# --- one scenario ----------------------------------------------------------------------------------------------------


class Drill:
    """Fresh topics, config and bookkeeping for one scenario."""

    def __init__(self, name: str, bootstrap: str, bundle: Path, workdir: Path, webhook: Webhook,
                 client: str = "kafka-python") -> None:  # fmt: skip
        self.name, self.bootstrap, self.workdir = name, bootstrap, workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:10]
        self.topic, self.alerts, self.dead = f"chaos-{tag}", f"chaos-alerts-{tag}", f"chaos-dead-{tag}"
        self.group = f"chaos-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics({self.topic: {"num_partitions": 2, "replication_factor": 1}})
        admin.close()
        config = config_from_dict({
            **DEMO_CONFIG,
            "kafka": {"bootstrap_servers": [bootstrap], "connect_timeout_s": 5, "client": client},
            "source": {"topics": [self.topic], "group_id": self.group, "start_from": "earliest",
                       "commit_interval_s": 0.5, "rebalance_stall_s": 10, "session_timeout_ms": 6000},
            "routes": [{"match": "*", "bundle_path": str(bundle)}],
            "replay": {"max_gap_s": MAX_GAP_S},
            "sinks": {"kafka": {"alerts_topic": self.alerts, "dead_letter_topic": self.dead,
                                "state_topic": f"chaos-state-{tag}"},
                      "webhook": {"url": webhook.url, "backoff_max_s": 2}},
            "service": {"http_port": 0, "log_format": "text", "shutdown_grace_s": 20},
        })  # fmt: skip
        self.config_path = self.workdir / "serve.toml"
        self.config_path.write_text(dump_config(config))
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        self.sent = self.bad = 0
        self.consumed_before = 0.0  # records counted by serve processes that were killed
        self.uncommitted_at_fault = 0
        self.serves: list[Serve] = []

    def serve(self) -> Serve:
        serve = Serve(self.config_path, self.workdir / f"serve-{len(self.serves)}.log")
        self.serves.append(serve)
        _wait(serve.ready, 90, "serve to be ready")
        serve.rss_start = serve.rss_mb()
        return serve

    def produce(self, messages: list[tuple[bytes, bytes]], *, bad: bool = False) -> None:
        for key, value in messages:
            self.producer.send(self.topic, key=key, value=value)
        self.producer.flush(timeout=120)
        if bad:
            self.bad += len(messages)
        else:
            self.sent += len(messages)

    def caught_up(self, serve: Serve, timeout_s: float = 300) -> None:
        def counted() -> float:
            return serve.metric("ae_monitor_records_total") + serve.metric("ae_monitor_dead_letters_total")

        try:
            _wait(lambda: counted() >= self.sent + self.bad - self.consumed_before, timeout_s, "serve to catch up")
        except TimeoutError as exc:
            wanted = self.sent + self.bad - self.consumed_before
            raise TimeoutError(f"{exc}: it counted {counted():,.0f} of {wanted:,} records") from None

    def kill_all(self) -> None:
        """After a failed drill: no serve process may outlive it."""
        for serve in self.serves:
            if serve.proc.poll() is None:
                serve.stop(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.producer.close(timeout=5)

    def finish(self, streams: dict[str, tuple[np.ndarray, bool]], rows: int) -> Row:
        serve = self.serves[-1]
        time.sleep(MAX_GAP_S + 2.0)  # silent streams are released, then the last commits and deliveries
        rss_end = serve.rss_mb()
        consumed = self.consumed_before + serve.metric("ae_monitor_records_total")
        serve.stop()
        row = Row(self.name, rss_mb=(self.serves[0].rss_start, rss_end))
        events = [json.loads(m.value) for m in _read_all(self.bootstrap, self.alerts)]
        third = rows // 3
        faulty = [name for name, (_, f) in streams.items() if f]
        fired = {e["stream"] for e in events if e["status"] == "firing"}
        row.faults = (len(fired & set(faulty)), len(faulty))
        row.duplicates = len(events) - len({(e["id"], e["status"]) for e in events})
        for name in faulty:
            span = (START_S + third, START_S + 2 * third + WINDOW)
            ids = {e["id"] for e in events if e["stream"] == name and e["status"] == "firing"
                   and span[0] - WINDOW <= e["event_time_s"] <= span[1]}  # fmt: skip
            row.refired += max(0, len(ids) - 1)
        row.read_again = max(0, int(consumed - self.sent) - self.uncommitted_at_fault)
        row.uncommitted = _uncommitted(self.bootstrap, self.group, self.topic)
        # Each stream's open window keeps its samples (one more: the commit rule waits for the window starting
        # after a sample) and, commits being prefixes, what came after them in the partition.
        row.open_bound = len(streams) * WINDOW
        row.dead = (len(_read_all(self.bootstrap, self.dead)), self.bad)
        self.producer.close()
        return row


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        seen: list[Any] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                seen.extend(batch)
        return seen
    finally:
        consumer.close()


def _uncommitted(bootstrap: str, group: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        end = consumer.end_offsets(partitions)
        return sum(end[tp] - (consumer.committed(tp) or 0) for tp in partitions)
    finally:
        consumer.close()


# --- the scenarios ---------------------------------------------------------------------------------------------------


def run_scenario(name: str, settings: Settings, broker: Any, bundle: Path, workdir: Path, webhook: Webhook) -> Row:
    streams = _streams(settings, seed=len(name))
    drill = Drill(name, broker[0].bootstrap, bundle, workdir, webhook, settings.client)
    try:
        return _drill(drill, name, streams, settings, broker, webhook)
    except Exception as exc:  # one drill that goes wrong is a row that says so; the next drills still run
        drill.kill_all()
        webhook.down = False
        return Row(name, notes=[f"{type(exc).__name__}: {exc}"], faults=(-1, 0))


def _drill(drill: Drill, name: str, streams: dict[str, tuple[np.ndarray, bool]], settings: Settings, broker: Any,
           webhook: Webhook) -> Row:  # fmt: skip
    serve = drill.serve()
    half = settings.rows // 2
    drill.produce(_messages(streams, slice(0, half)))
    drill.caught_up(serve)
    time.sleep(1.0)  # a commit or two
    drill.uncommitted_at_fault = int(serve.metric("ae_monitor_uncommitted_records"))
    if name == "broker-pause":
        os.kill(broker[0].pid, signal.SIGSTOP)
        time.sleep(settings.pause_s)
        os.kill(broker[0].pid, signal.SIGCONT)
    elif name == "broker-restart":
        kafka_broker.kill_broker(broker[0])
        time.sleep(settings.restart_after_s)
        broker[0] = kafka_broker.restart_broker(broker[0])
    elif name == "serve-kill":
        drill.consumed_before = serve.metric("ae_monitor_records_total")
        serve.stop(signal.SIGKILL)
        serve = drill.serve()
    elif name == "sink-outage":
        webhook.down = True
    elif name == "stalled-stream":
        first = _messages({"stalled": (streams["pump-0"][0], False)}, slice(0, 1))[0]
        drill.produce([first] * 300)
    elif name == "fuzz":
        drill.produce(_bad_records(settings.fuzz_records, random.Random(7)), bad=True)
    elif name == "many-streams":
        rng = np.random.default_rng(1)
        crowd = {f"crowd-{i}": (machine(3, rng)[0], False) for i in range(settings.many_streams)}
        drill.produce(_messages(crowd, slice(0, 3)))
    if name == "soak":
        _soak(drill, streams, settings, half)
    else:
        drill.produce(_messages(streams, slice(half, settings.rows)))
    if name == "sink-outage":
        time.sleep(settings.outage_s)
        webhook.down = False
    _wait(serve.ready, 120, "serve to be ready again")
    drill.caught_up(serve)
    return drill.finish(streams, settings.rows)


def _soak(drill: Drill, streams: dict[str, tuple[np.ndarray, bool]], settings: Settings, half: int) -> None:
    """The second half of the streams, then fresh rows of healthy streams, paced at `soak_rate` until `soak_s`."""
    drill.produce(_messages(streams, slice(half, settings.rows)))
    rng = np.random.default_rng(3)
    started, row = time.monotonic(), settings.rows
    healthy = {f"soak-{i}": (machine(60, rng)[0], False) for i in range(50)}
    while time.monotonic() - started < settings.soak_s:
        tick = time.monotonic()
        batch = [(k, v) for k, v in _messages(healthy, slice(0, 60))]
        drill.produce([(k, _shift(v, row)) for k, v in batch])
        row += 60
        time.sleep(max(0.0, len(batch) / settings.soak_rate - (time.monotonic() - tick)))


def _shift(value: bytes, rows: int) -> bytes:
    body = json.loads(value)
    body["ts"] += rows
    return json.dumps(body).encode()


# --- main -------------------------------------------------------------------------------------------------------------


def _train(workdir: Path) -> Path:
    rng = np.random.default_rng(11)
    write_csv(workdir / "train" / "pump.csv", machine(3000, rng)[0], None)
    out = workdir / "bundle"
    train_bundle(demo_config(), [workdir / "train"], out, name="pump", progress=False)
    return out


def _print(rows: list[Row]) -> None:
    head = f"{'scenario':<16}{'faults':>8}{'dup events':>12}{'re-fired':>10}{'read again':>12}" \
           f"{'uncommitted':>13}{'dead / bad':>16}{'RSS MB':>16}  holds"  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.scenario:<16}{f'{r.faults[0]}/{r.faults[1]}':>8}{r.duplicates:>12}{r.refired:>10}"
              f"{r.read_again:>12}{f'{r.uncommitted} (<= {r.open_bound})':>13}"
              f"{f'{r.dead[0]} / {r.dead[1]}':>16}{f'{r.rss_mb[0]:.0f} -> {r.rss_mb[1]:.0f}':>16}  "
              f"{'yes' if r.holds else 'NO'}{'  ' + '; '.join(r.notes) if r.notes else ''}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario small (a smoke test)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep the broker, bundle and serve logs here (default: temp)")
    parser.add_argument("--soak-s", type=float, help="soak duration in seconds (600; quick: 15)")
    parser.add_argument("--soak-rate", type=float, help="soak records per second (20,000; quick: 2,000)")
    parser.add_argument(
        "--client",
        choices=("kafka-python", "confluent"),
        default="kafka-python",
        help="the Kafka library serve uses (kafka.client)",
    )
    args = parser.parse_args(argv)
    names = [n for n in args.scenarios.split(",") if n]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}")
    settings = Settings.quick() if args.quick else Settings()
    if args.soak_s is not None:
        settings.soak_s = args.soak_s
    if args.soak_rate is not None:
        settings.soak_rate = args.soak_rate
    settings.client = args.client
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ae-monitor-chaos-")))
        broker = [kafka_broker.start_broker(workdir / "kafka")]
        webhook = Webhook()
        try:
            bundle = _train(workdir)
            for name in names:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                rows.append(run_scenario(name, settings, broker, bundle, workdir, webhook))
        finally:
            webhook.close()
            kafka_broker.stop_broker(broker[0])
    _print(rows)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0 if all(r.holds for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
