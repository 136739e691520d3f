"""Per-stream learning in `serve` against a real Kafka broker: a stream with no model of its own is learned from its
first samples in the trainer's worker process, registered, scored by its model; another serve process that takes
the partition over loads the model from the registry instead of training again."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry
from test_learning import START_S, other_pump

from ae_monitor.config import Config, config_from_dict, dump_config
from ae_monitor.jobs.demo import CHANNELS, DEMO_CONFIG, Fault
from ae_monitor.jobs.learn import StreamTrainer
from ae_monitor.model.bundle import load_bundle
from ae_monitor.registry import Registry, stream_model_name
from ae_monitor.serve.app import serve

STREAM = "site-b/pump-7"
PROBATION = 1700
WINDOW = DEMO_CONFIG["features"]["sensor"]["window_samples"]


def learning_config(bootstrap: str, topic: str, bundle: Path, root: Path, retrain: dict[str, Any] | None = None,
                    *, client: str = "kafka-python") -> Config:  # fmt: skip
    tag = topic.rsplit("-", 1)[-1]
    return config_from_dict({
        **DEMO_CONFIG,
        "kafka": {"bootstrap_servers": [bootstrap], "client": client},
        "source": {"topics": [topic], "group_id": f"g-{tag}", "start_from": "earliest", "commit_interval_s": 0.2,
                   "session_timeout_ms": 6000},
        "routes": [{"match": "*", "bundle_path": str(bundle), "learn": "per_stream", "probation_samples": PROBATION,
                    "learned_registry": str(root)}],
        "learning": {"worker": "process", **({"retrain": retrain} if retrain else {})},
        "sinks": {"kafka": {"alerts_topic": f"alerts-{tag}", "dead_letter_topic": f"dead-{tag}",
                            "state_topic": f"state-{tag}"}},
        "service": {"http_port": 0, "log_format": "text", "shutdown_grace_s": 10},
        "scoring": {"max_batch_delay_ms": 20},
    })  # fmt: skip


def produce(bootstrap: str, topic: str, values: npt.NDArray[np.float64], first: int) -> None:
    """`values` as one record per row of STREAM, one second apart from START_S + `first`."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i, row in enumerate(values):
        body = {"ts": START_S + first + i, "values": dict(zip(CHANNELS, map(float, row), strict=True))}
        producer.send(topic, key=STREAM.encode(), value=json.dumps(body).encode())
    producer.flush()
    producer.close()


def wait_for(what: str, done: Callable[[], bool], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Serving:
    """`serve` (with the trainer the CLI passes) in a thread at a time."""

    def __init__(self) -> None:
        self._running: tuple[threading.Event, threading.Thread] | None = None

    def start(self, config: Config) -> CollectorRegistry:
        self.stop()
        stop, registry = threading.Event(), CollectorRegistry()
        kwargs: dict[str, Any] = {"registry": registry, "stop": stop, "trainer": StreamTrainer()}
        thread = threading.Thread(target=serve, args=(config,), kwargs=kwargs)
        thread.start()
        self._running = (stop, thread)
        return registry

    def stop(self) -> None:
        if self._running is not None:
            stop, thread = self._running
            stop.set()
            thread.join(timeout=60)
            assert not thread.is_alive(), "serve did not stop"
            self._running = None


@pytest.fixture
def serving() -> Iterator[Serving]:
    started = Serving()
    yield started
    started.stop()


def test_a_new_stream_is_learned_registered_and_scored_by_its_own_model_and_a_restart_loads_it(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, tmp_path: Path,
    serving: Serving,
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    root = tmp_path / "learned"
    config = learning_config(kafka_bootstrap, topic, sensor_bundle, root, client=client_library)
    model = stream_model_name(STREAM)
    metrics = serving.start(config)

    def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    produce(kafka_bootstrap, topic, other_pump(PROBATION, seed=21), 0)
    wait_for("the stream's own model", lambda: gauge(metrics, "ae_monitor_learning_streams", state="scoring") == 1)
    assert gauge(metrics, "ae_monitor_learning_trainings_total", outcome="ok") == 1
    version = Registry(root).resolve(model, "production")
    assert version.provenance["metrics"]["samples"] == PROBATION
    assert version.provenance["training"]["data_span"]["start"] == "2023-11-14T22:13:20+00:00"

    fault_at = PROBATION + 10 + 600
    produce(kafka_bootstrap, topic, other_pump(1000, seed=22, fault=Fault("vibration_rms", 600, 900, "decouple")),
            PROBATION + 10)  # fmt: skip
    consumer = KafkaConsumer(f"alerts-{topic.rsplit('-', 1)[-1]}", bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)  # fmt: skip
    own: list[dict[str, Any]] = []
    try:
        # Every window of the 1000 rows is scored once the windows-scored counter of the model has them all.
        scored = 1000 - DEMO_CONFIG["features"]["sensor"]["window_samples"] + 1
        wait_for("the windows", lambda: gauge(metrics, "ae_monitor_windows_scored_total", bundle=model) >= scored)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:  # until the alerts topic has had nothing new for 3 s
            for batch in consumer.poll(timeout_ms=500).values():
                own += [a for m in batch if (a := json.loads(m.value))["bundle_name"] == model]
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    firing = [a for a in own if a["status"] == "firing"]
    first_faulty_window = START_S + fault_at - DEMO_CONFIG["features"]["sensor"]["window_samples"] + 1
    assert firing, "the fault raised no alert of the stream's own model"
    assert all(a["event_time_s"] >= first_faulty_window for a in firing), firing

    # Another serve process (`ae-monitor serve`, as deployed) takes the partition over: it loads the stream's model
    # from the registry instead of training again.
    serving.stop()
    port = free_port()
    service = config.service.model_copy(update={"http_port": port})
    (tmp_path / "serve.toml").write_text(dump_config(config.model_copy(update={"service": service})))
    argv = [sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(tmp_path / "serve.toml")]
    with (tmp_path / "serve.log").open("wb") as log:
        daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        produce(kafka_bootstrap, topic, other_pump(100, seed=23), PROBATION + 2000)
        url = f"http://127.0.0.1:{port}"
        wait_for("the second serve's scoring stream", lambda: daemon.poll() is None
                 and readyz(url).get("learning", {}).get("scoring") == 1, timeout_s=120)  # fmt: skip
        assert readyz(url)["learning"] == {"learning": 0, "scoring": 1, "retraining": 0}
        page = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        assert 'ae_monitor_learning_trainings_total{outcome="ok"} 0.0' in page
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert daemon.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert [v.number for v in Registry(root).versions(model)] == [1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readyz(url: str) -> dict[str, Any]:
    """/readyz as JSON; {} while the daemon does not answer yet."""
    try:
        with urllib.request.urlopen(url + "/readyz?format=json", timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as not_ready:  # 503 until partitions are assigned: the body is there all the same
        return dict(json.loads(not_ready.read()))
    except OSError:
        return {}


def test_a_learned_stream_that_moves_to_a_new_operating_point_is_retrained_and_its_candidate_promoted_in_shadow(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, tmp_path: Path,
    serving: Serving,
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    root = tmp_path / "learned"
    retrain = {"enabled": True, "reservoir_samples": 3000, "holdback_samples": 300, "lookback_windows": 100,
               "alert_share": 0.5, "shadow_windows": 200}  # fmt: skip
    config = learning_config(kafka_bootstrap, topic, sensor_bundle, root, retrain, client=client_library)
    tag = topic.rsplit("-", 1)[-1]
    kafka_sinks = config.sinks.kafka.model_copy(update={"scores_topic": f"scores-{tag}"})
    config = config.model_copy(update={"sinks": config.sinks.model_copy(update={"kafka": kafka_sinks})})
    model = stream_model_name(STREAM)
    metrics = serving.start(config)

    def sample(name: str, **labels: str) -> float:
        return metrics.get_sample_value(name, labels) or 0.0

    produce(kafka_bootstrap, topic, other_pump(PROBATION, seed=21), 0)
    wait_for("the stream's own model", lambda: sample("ae_monitor_learning_streams", state="scoring") == 1)
    # The pump moves to a new operating point; its model flags it until a retraining cycle has run.
    shifted = shifted_pump(7400, seed=22)
    produce(kafka_bootstrap, topic, shifted[:3400], PROBATION)
    wait_for("the retraining", lambda: sample("ae_monitor_learning_streams", state="retraining") == 1)
    sent = 3400  # then more normal rows at the new level, until the candidate is promoted
    while sample("ae_monitor_learning_retrainings_total", outcome="promoted") == 0:
        assert sent < len(shifted), "no promotion after 4,000 more rows at the new level"
        produce(kafka_bootstrap, topic, shifted[sent : sent + 100], PROBATION + sent)
        sent += 100
        time.sleep(0.5)
    sent += PROBATION
    promoted = Registry(root).resolve(model, "production")
    assert promoted.number == 2
    assert promoted.provenance["parent"] == 1
    assert promoted.provenance["metrics"]["shadow_decision"] == "promoted"
    v2 = load_bundle(promoted.bundle_path).version

    first = sent + 60  # a gap longer than replay.max_gap_s: no window spans the seam between the two series
    scored = settled(lambda: sample("ae_monitor_windows_scored_total", bundle=model)) + 1000 - WINDOW + 1
    produce(kafka_bootstrap, topic, shifted_pump(1000, seed=23, fault=Fault("vibration_rms", 600, 900, "decouple")),
            first)  # fmt: skip
    wait_for("the windows", lambda: sample("ae_monitor_windows_scored_total", bundle=model) >= scored)
    alerts = read_topic(kafka_bootstrap, f"alerts-{tag}")
    own = [a for a in alerts if a["bundle_name"] == model]
    after = [a for a in own if a["status"] == "firing" and a["bundle_version"] == v2]
    fault_from = START_S + first + 600 - WINDOW + 1  # the first window holding a faulty row
    assert any(a["event_time_s"] >= fault_from for a in after), "the fault after the promotion raised no alert"
    # Normal at the new level: version 1 flagged every window of it (its shadow-period share); version 2 is back
    # near its calibrated rate. At most one short false episode is the bound: one now and then is in the
    # calibration's noise (about 380 held-out windows set the threshold), and which rows the reservoir holds when it
    # retrains depends on the micro-batch boundaries, so runs differ by one episode (0 or 32 of these 571 windows,
    # 5.6 %, on the same code). A level it has not learned flags nearly every window, as version 1 did.
    normal = [w for w in read_topic(kafka_bootstrap, f"scores-{tag}")
              if START_S + first <= w["start_s"] < fault_from]  # fmt: skip
    assert len(normal) == 600 - WINDOW + 1
    flagged = sum(w["score"] > w["threshold"] for w in normal) / len(normal)
    assert promoted.provenance["metrics"]["production_false_alert_share"] > 0.9
    false_episodes = [a["event_time_s"] - START_S - first for a in after if a["event_time_s"] < fault_from]
    assert len(false_episodes) <= 1, false_episodes
    assert flagged <= 0.1, (flagged, [(a["event_time_s"] - START_S - first) for a in after])
    # The shift's episode (version 1) is resolved once, by version 2's windows; no episode is sent twice.
    events: dict[str, list[str]] = {}
    for alert in alerts:  # the route bundle's episode of the probation is resolved by the learned model's windows
        events.setdefault(alert["id"], []).append(alert["status"])
    assert all(statuses in (["firing"], ["firing", "resolved"]) for statuses in events.values()), events
    shift = [a for a in own if a["status"] == "firing" and a["event_time_s"] >= START_S + PROBATION - WINDOW]
    assert events[shift[0]["id"]] == ["firing", "resolved"]


def test_a_learned_model_older_than_max_model_age_s_is_retrained_on_schedule_and_decided_in_shadow(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, tmp_path: Path,
    serving: Serving,
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    root = tmp_path / "learned"
    # Normal rows only: neither the alert share nor a drift episode asks for a retraining; the model's age does.
    retrain = {"enabled": True, "lookback_windows": 100, "shadow_windows": 100, "max_model_age_s": 1.0}
    config = learning_config(kafka_bootstrap, topic, sensor_bundle, root, retrain, client=client_library)
    metrics = serving.start(config)

    def sample(name: str, **labels: str) -> float:
        return metrics.get_sample_value(name, labels) or 0.0

    model = stream_model_name(STREAM)
    normal = other_pump(PROBATION + 6000, seed=31)
    produce(kafka_bootstrap, topic, normal[:PROBATION], 0)
    wait_for("the stream's own model", lambda: sample("ae_monitor_learning_streams", state="scoring") == 1)
    sent = PROBATION  # then rows at the same level: the reservoir fills, the model is past its age
    decided = ("promoted", "discarded")
    while not any(sample("ae_monitor_learning_retrainings_total", outcome=o) for o in decided):
        assert sent < len(normal), "no scheduled retraining decided after 6,000 more normal rows"
        produce(kafka_bootstrap, topic, normal[sent : sent + 200], sent)
        sent += 200
        time.sleep(0.5)
    candidate = Registry(root).version(model, 2)
    assert candidate.provenance["parent"] == 1
    assert candidate.provenance["note"].endswith("retrained for: schedule")
    assert candidate.provenance["metrics"]["shadow_decision"] in decided
    production = Registry(root).resolve(model, "production").number
    assert production == (2 if candidate.provenance["metrics"]["shadow_decision"] == "promoted" else 1)


def settled(read: Callable[[], float], quiet_s: float = 2.0) -> float:
    """What `read` gives once it has not changed for `quiet_s` (serve has scored what was sent)."""
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return value


def shifted_pump(n: int, seed: int, fault: Fault | None = None) -> npt.NDArray[np.float64]:
    return other_pump(n, seed, fault) + np.array([0.0, 2.5, 0.0, 6.0])  # as in tests/test_retraining.py


def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every message on `topic` (JSON), once it has had nothing new for 3 s."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)  # fmt: skip
    messages: list[dict[str, Any]] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:
            for batch in consumer.poll(timeout_ms=500).values():
                messages += [json.loads(m.value) for m in batch]
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return messages
