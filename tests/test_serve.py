"""`ae-monitor serve` against a real Kafka broker: alerts, dead letters, commits, restarts and scale-out."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from script_loader import load_script

from ae_monitor.config import Config, RouteConfig, config_from_dict, dump_config
from ae_monitor.engine import Engine
from ae_monitor.jobs.demo import CHANNELS, DEMO_CONFIG
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle, save_bundle
from ae_monitor.records import Alert, DeadLetter
from ae_monitor.serve.app import serve
from ae_monitor.serve.offline import Runner
from ae_monitor.serve.outputs import Outputs
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.decode import decode_message
from ae_monitor.sources.files import read_sensor_csv

Message = tuple[bytes, bytes]


def _messages(csv: Path, stream: str, config: Config, rows: slice = slice(None)) -> list[Message]:
    table = read_sensor_csv(csv, config.features.sensor)
    out = []
    for ts, row in zip(table.ts_s[rows], table.values[rows], strict=True):
        body = {"ts": float(ts), "values": dict(zip(table.channels, map(float, row), strict=True))}
        out.append((stream.encode(), json.dumps(body).encode()))
    return out


def _serve_config(bootstrap: str, topic: str, bundle: Path, *, client: str = "kafka-python",
                  **sections: dict[str, Any]) -> Config:  # fmt: skip
    tag = topic.rsplit("-", 1)[-1]
    data: dict[str, Any] = {
        **DEMO_CONFIG,
        "kafka": {"bootstrap_servers": [bootstrap], "client": client},
        "source": {"topics": [topic], "group_id": f"g-{tag}", "start_from": "earliest", "commit_interval_s": 0.2,
                   "rebalance_stall_s": 12,
                   "session_timeout_ms": 6000},
        "routes": [{"match": "*", "bundle_path": str(bundle)}],
        "sinks": {"kafka": {"alerts_topic": f"alerts-{tag}", "dead_letter_topic": f"dead-{tag}",
                            "state_topic": f"state-{tag}", "scores_topic": f"scores-{tag}",
                            "codes_topic": f"codes-{tag}", "cleaned_topic": f"cleaned-{tag}"}},
        "service": {"http_port": 0, "log_format": "text", "shutdown_grace_s": 10},
        "scoring": {"max_batch_delay_ms": 20},
    }  # fmt: skip
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def _produce(bootstrap: str, topic: str, messages: list[Message]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _read(bootstrap: str, topic: str, until: Callable[[list[Any]], bool], *, timeout_s: float = 60) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)  # fmt: skip
    seen: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(seen):
            for batch in consumer.poll(timeout_ms=200).values():
                seen.extend(batch)
    finally:
        consumer.close()
    return seen


def _expected_alerts(bundle: Path, messages: list[Message], config: Config) -> list[Alert]:
    """The alerts the engine raises for `messages`, computed offline: ids are deterministic."""
    sink: MemorySink[Alert] = MemorySink()
    metrics = Metrics(_registry())
    engine = Engine(load_bundle(bundle), alerting=config.alerting, metrics=metrics, max_gap_s=config.replay.max_gap_s)
    runner = Runner(engine, Outputs(alerts=sink, dead_letters=MemorySink[DeadLetter]()), metrics)
    for key, value in messages:
        runner.process([decode_message(key, value, [])])
    return sink.items


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[[Config], tuple[threading.Event, threading.Thread, Any]]]:
    """Runs `serve` in a thread; stops it at the end of the test."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(config: Config) -> tuple[threading.Event, threading.Thread, Any]:
        stop, registry = threading.Event(), _registry()
        thread = threading.Thread(target=serve, args=(config,), kwargs={"registry": registry, "stop": stop})
        thread.start()
        started.append((stop, thread))
        return stop, thread, registry

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(timeout=30)


def _interleave(*streams: list[Message]) -> list[Message]:
    out = []
    for group in zip(*streams, strict=False):
        out.extend(group)
    return out


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def test_faulty_streams_raise_exactly_the_expected_alerts_on_the_alerts_topic(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
) -> None:  # fmt: skip
    topic = kafka_topic(3)
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    replay = sensor_data[1]
    messages = _interleave(*(_messages(replay / f"pump-{i}.csv", f"pump-{i}", config) for i in (1, 2, 3)))
    expected = _expected_alerts(sensor_bundle, messages, config)
    assert {a.status for a in expected} == {"firing", "resolved"}
    _, _, registry = running(config)
    _produce(kafka_bootstrap, topic, [*messages, (b"pump-9", b"{not json"), (b"pump-9", b'{"ts": 1, "values": {}}')])

    wanted = {(a.id, a.status) for a in expected}
    got = _read(
        kafka_bootstrap,
        f"alerts-{topic.rsplit('-', 1)[-1]}",
        lambda seen: wanted <= {(json.loads(m.value)["id"], json.loads(m.value)["status"]) for m in seen},
    )
    assert {(json.loads(m.value)["id"], json.loads(m.value)["status"]) for m in got} == wanted
    assert all(m.key.decode() == json.loads(m.value)["stream"] for m in got)

    dead = _read(kafka_bootstrap, f"dead-{topic.rsplit('-', 1)[-1]}", lambda seen: len(seen) >= 2)
    reasons = sorted(dict(m.headers)["reason"].decode() for m in dead)
    assert reasons == ["invalid_field", "invalid_json"]
    assert {m.value for m in dead} == {b"{not json", b'{"ts": 1, "values": {}}'}
    assert (registry.get_sample_value("ae_monitor_dead_letters_total", {"reason": reasons[0]}) or 0) >= 1
    assert registry.get_sample_value("ae_monitor_partitions_assigned") == 3


def test_the_codes_and_cleaned_topics_carry_one_message_per_scored_window(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    tag = topic.rsplit("-", 1)[-1]
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    running(config)
    _produce(kafka_bootstrap, topic, _messages(sensor_data[1] / "pump-2.csv", "pump-2", config, slice(0, 200)))
    windows = 200 - config.features.sensor.window_samples + 1
    scores = _read(kafka_bootstrap, f"scores-{tag}", lambda seen: len(seen) >= windows)
    codes = _read(kafka_bootstrap, f"codes-{tag}", lambda seen: len(seen) >= windows)
    assert len(scores) == len(codes) == windows
    by_window = {(json.loads(m.value)["start_s"], json.loads(m.value)["end_s"]) for m in codes}
    assert by_window == {(json.loads(m.value)["start_s"], json.loads(m.value)["end_s"]) for m in scores}
    first = json.loads(codes[0].value)
    assert len(first["code"]) == config.model.latent_dim
    assert first["bundle_version"] == load_bundle(sensor_bundle).version
    cleaned = _read(kafka_bootstrap, f"cleaned-{tag}", lambda seen: len(seen) >= windows)
    assert len(cleaned) == windows
    window = json.loads(cleaned[-1].value)
    # Raw units per channel: the reconstruction of a normal pump stays near its measured values.
    assert set(window["values"]) == set(CHANNELS)
    assert all(len(v) == config.features.sensor.window_samples for v in window["values"].values())
    assert 35 < sum(window["values"]["temperature_c"]) / config.features.sensor.window_samples < 65


def test_streams_are_routed_to_bundles_on_the_machine_type_field_of_their_records(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path,
    sensor_data: tuple[Path, Path], running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
    tmp_path: Path,
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    tag = topic.rsplit("-", 1)[-1]
    fans = save_bundle(dataclasses.replace(load_bundle(sensor_bundle), name="fans"), tmp_path / "fans")
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    routes = [{"match": "pump*", "field": "machine_type", "bundle_path": str(sensor_bundle)},
              {"match": "fan", "field": "machine_type", "bundle_path": str(fans)}]  # fmt: skip
    config = config.model_copy(update={"routes": tuple(RouteConfig(**r) for r in routes)})
    running(config)

    def tagged(stream: str, machine_type: str) -> list[Message]:
        messages = _messages(sensor_data[1] / f"{stream}.csv", stream, config, slice(0, 40))
        return [
            (k, v.replace(b'{"ts"', b'{"machine_type": "' + machine_type.encode() + b'", "ts"')) for k, v in messages
        ]

    _produce(
        kafka_bootstrap, topic, [*tagged("pump-1", "pump-v2"), *tagged("pump-2", "fan"), *tagged("pump-3", "valve")]
    )
    windows = 2 * (40 - config.features.sensor.window_samples + 1)
    scores = [json.loads(m.value) for m in _read(kafka_bootstrap, f"scores-{tag}", lambda seen: len(seen) >= windows)]
    assert {(s["stream"], s["bundle"]) for s in scores} == {("pump-1", load_bundle(sensor_bundle).name),
                                                           ("pump-2", "fans")}  # fmt: skip
    dead = _read(kafka_bootstrap, f"dead-{tag}", lambda seen: len(seen) >= 40)
    assert {dict(m.headers)["reason"] for m in dead} == {b"no_route"}  # the valve has no bundle
    letter = json.loads(dead[0].value)  # the record itself, to fix and produce again
    assert (dead[0].key, letter["stream"], letter["machine_type"]) == (b"pump-3", "pump-3", "valve")
    assert set(letter["values"]) == set(CHANNELS)


def test_a_tombstone_on_the_input_topic_is_a_dead_letter_and_the_daemon_goes_on(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    tag = topic.rsplit("-", 1)[-1]
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    _, thread, _ = running(config)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topic, key=b"pump-1", value=None)
    producer.flush()
    producer.close()
    _produce(kafka_bootstrap, topic, _messages(sensor_data[1] / "pump-1.csv", "pump-1", config, slice(0, 31)))
    dead = _read(kafka_bootstrap, f"dead-{tag}", lambda seen: len(seen) >= 1)
    assert [dict(m.headers)["reason"] for m in dead] == [b"empty_value"]
    assert _read(kafka_bootstrap, f"scores-{tag}", lambda seen: len(seen) >= 2)  # 31 samples: two windows
    assert thread.is_alive()


def _http(url: str) -> tuple[int, str]:
    """(status, body); (0, why) when the request got no answer (a reset connection on a loaded machine)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (ConnectionError, http.client.RemoteDisconnected) as exc:
        return 0, repr(exc)


def _wait(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class Daemon:
    """`ae-monitor serve` as a separate process, with its HTTP port read from the log."""

    def __init__(self, config: Config, tmp: Path, name: str) -> None:
        path = tmp / f"{name}.toml"
        path.write_text(dump_config(config))
        self.log = tmp / f"{name}.log"
        self._log_handle = self.log.open("w")
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(path)],
                                     stderr=self._log_handle, stdout=subprocess.DEVNULL, env=env)  # fmt: skip
        _wait(lambda: "serving /metrics" in self.log.read_text() or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.log.read_text()
        line = next(x for x in self.log.read_text().splitlines() if "serving /metrics" in x)
        self.url = line.rsplit(" ", 1)[-1]

    def metric(self, name: str) -> float:
        _, text = _http(self.url + "/metrics")
        values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + " ")]
        return values[0] if values else 0.0

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            self._log_handle.close()
        return code, time.monotonic() - started


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Config, str], Daemon]]:
    """Starts `ae-monitor serve` processes; kills any still running when the test ends."""
    started: list[Daemon] = []

    def start(config: Config, name: str) -> Daemon:
        started.append(Daemon(config, tmp_path, name))
        return started[-1]

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


def _window_starts(messages: list[Any], stream: str) -> set[float]:
    return {json.loads(m.value)["start_s"] for m in messages if m.key.decode() == stream}


def test_sigterm_commits_and_a_restart_resumes_with_no_window_lost(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    daemons: Callable[[Config, str], Daemon],
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    tag = topic.rsplit("-", 1)[-1]
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    messages = _messages(sensor_data[1] / "pump-1.csv", "pump-1", config, slice(0, 400))
    first = daemons(config, "first")
    _wait(lambda: _http(first.url + "/readyz")[0] == 200)
    assert _http(first.url + "/healthz")[0] == 200
    _produce(kafka_bootstrap, topic, messages[:200])
    _wait(lambda: _scored(first) >= 200 - 29)
    _wait(lambda: first.metric("ae_monitor_last_commit_timestamp_seconds") > 0)  # an acknowledged commit
    code, seconds = first.stop()
    assert code == 0
    assert seconds < config.service.shutdown_grace_s
    committed = _committed(kafka_bootstrap, config.source.group_id if config.source else "", topic, 1)
    assert 0 < committed <= 200 - 29  # the last 29 samples still wait for a window when it stops

    _produce(kafka_bootstrap, topic, messages[200:])
    second = daemons(config, "second")
    expected = {float(json.loads(v)["ts"]) for _, v in messages[: 400 - 30 + 1]}
    scores = _read(kafka_bootstrap, f"scores-{tag}", lambda seen: expected <= _window_starts(seen, "pump-1"))
    second.stop()
    assert expected <= _window_starts(scores, "pump-1"), "a window was lost across the restart"


def _scored(daemon: Daemon) -> float:
    _, text = _http(daemon.url + "/metrics")
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith("ae_monitor_windows_scored_total{")]
    return sum(values)


def test_two_daemons_split_the_partitions_and_one_takes_over_when_the_other_is_killed(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    daemons: Callable[[Config, str], Daemon],
) -> None:  # fmt: skip
    topic = kafka_topic(4)
    tag = topic.rsplit("-", 1)[-1]
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    streams = [f"pump-{i}" for i in range(8)]
    per_stream = {s: _messages(sensor_data[1] / "pump-1.csv", s, config, slice(0, 300)) for s in streams}
    a, b = daemons(config, "a"), daemons(config, "b")
    owned = ("ae_monitor_partitions_assigned",)
    # Cooperative rebalancing hands partitions over in two rounds: wait until both own some and none is left out.
    _wait(lambda: min(a.metric(*owned), b.metric(*owned)) > 0 and a.metric(*owned) + b.metric(*owned) == 4)
    _produce(kafka_bootstrap, topic, _interleave(*(m[:150] for m in per_stream.values())))
    _wait(lambda: _scored(a) + _scored(b) >= 8 * (150 - 29))
    b.stop(signal.SIGKILL)
    _produce(kafka_bootstrap, topic, _interleave(*(m[150:] for m in per_stream.values())))
    last = float(json.loads(per_stream["pump-0"][300 - 30][1])["ts"])
    scores = _read(kafka_bootstrap, f"scores-{tag}",
                   lambda seen: all(last in _window_starts(seen, s) for s in streams), timeout_s=90)  # fmt: skip
    a.stop()
    assert all(last in _window_starts(scores, s) for s in streams), "a stream was left unscored"


def test_a_changed_bundle_is_swapped_in_and_a_bad_one_is_refused(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, tmp_path: Path,
    running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
) -> None:  # fmt: skip
    import dataclasses
    import shutil

    import torch

    from ae_monitor.model.bundle import WEIGHTS, save_bundle, weights_version

    served = Path(shutil.copytree(sensor_bundle, tmp_path / "served"))
    config = _serve_config(kafka_bootstrap, kafka_topic(1), served, client=client_library,
                           service={"reload_check_s": 0.1})  # fmt: skip
    _, _, registry = running(config)
    old = load_bundle(served)
    info = "ae_monitor_bundle_info"
    _wait(lambda: registry.get_sample_value(info, {"bundle": "pump", "version": old.version}) == 1)
    _wait(lambda: registry.get_sample_value("ae_monitor_ready") == 1)  # the main loop is running

    with torch.no_grad():
        next(old.model.parameters()).add_(0.01)
    new = dataclasses.replace(old, version=weights_version(old.model))
    save_bundle(new, served)
    _wait(lambda: registry.get_sample_value(info, {"bundle": "pump", "version": new.version}) == 1)
    assert registry.get_sample_value(info, {"bundle": "pump", "version": old.version}) == 0
    assert registry.get_sample_value("ae_monitor_bundle_reloads_total", {"result": "ok"}) == 1

    (served / WEIGHTS).write_bytes(b"tampered")
    (served / "manifest.json").touch()
    _wait(lambda: (registry.get_sample_value("ae_monitor_bundle_reloads_total", {"result": "failed"}) or 0) >= 1)
    assert registry.get_sample_value(info, {"bundle": "pump", "version": new.version}) == 1


def test_a_route_by_registry_alias_is_reloaded_when_the_alias_is_promoted_or_rolled_back(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, tmp_path: Path,
    running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
) -> None:  # fmt: skip
    import torch

    from ae_monitor.model.bundle import weights_version
    from ae_monitor.registry import Registry

    models = Registry(tmp_path / "models")
    models.register("pump", sensor_bundle)
    old = load_bundle(sensor_bundle)
    with torch.no_grad():
        next(old.network.parameters()).add_(0.01)
    new = dataclasses.replace(old, version=weights_version(old.network))
    models.register("pump", save_bundle(new, tmp_path / "retrained"), parent=1)
    models.promote("pump", 1, "production")
    reference = f"registry://{tmp_path / 'models'}/pump@production"
    config = _serve_config(kafka_bootstrap, kafka_topic(1), Path("unused"), client=client_library,
                           service={"reload_check_s": 0.1})  # fmt: skip
    config = config.model_copy(update={"routes": (RouteConfig(bundle_path=reference),)})
    _, _, registry = running(config)
    info = "ae_monitor_bundle_info"
    first = load_bundle(sensor_bundle).version
    _wait(lambda: registry.get_sample_value(info, {"bundle": "pump", "version": first}) == 1)
    _wait(lambda: registry.get_sample_value("ae_monitor_ready") == 1)

    models.promote("pump", 2, "production")
    _wait(lambda: registry.get_sample_value(info, {"bundle": "pump", "version": new.version}) == 1)
    assert registry.get_sample_value(info, {"bundle": "pump", "version": first}) == 0
    models.rollback("pump", "production")
    _wait(lambda: registry.get_sample_value(info, {"bundle": "pump", "version": first}) == 1)
    assert registry.get_sample_value(info, {"bundle": "pump", "version": new.version}) == 0
    assert registry.get_sample_value("ae_monitor_bundle_reloads_total", {"result": "ok"}) == 2


# --- faults: silent streams, takeovers, broker outages ------------------------------------------------------------


def test_a_stream_that_stops_completing_windows_does_not_hold_back_the_commits_of_its_partition(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    running: Callable[[Config], tuple[threading.Event, threading.Thread, Any]],
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library, replay={"max_gap_s": 2.0})
    ok = _messages(sensor_data[1] / "pump-1.csv", "ok", config, slice(0, 300))
    first = _messages(sensor_data[1] / "pump-1.csv", "dup", config, slice(0, 1))[0]
    # `dup` sends one sample, then only that timestamp again (late: dropped); `ok` goes on normally.
    messages = [first, *_interleave(ok, [first] * 300)]
    running(config)
    _produce(kafka_bootstrap, topic, messages)
    group = config.source.group_id if config.source else ""
    _wait(lambda: _committed(kafka_bootstrap, group, topic, 1) == len(messages), timeout_s=45)


def test_a_peer_taking_over_a_partition_continues_the_firing_episode_under_its_id(
    client_library: str,
    kafka_bootstrap: str, kafka_topic: Callable[..., str], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    daemons: Callable[[Config, str], Daemon],
) -> None:  # fmt: skip
    topic = kafka_topic(1)
    tag = topic.rsplit("-", 1)[-1]
    config = _serve_config(kafka_bootstrap, topic, sensor_bundle, client=client_library)
    messages = _messages(sensor_data[1] / "pump-3.csv", "pump-3", config)  # a pressure fault over rows 250-450
    # Both start before anything fires: the peer cannot have read the episode at its startup.
    a, b = daemons(config, "a"), daemons(config, "b")
    owned = "ae_monitor_partitions_assigned"
    _wait(lambda: a.metric(owned) + b.metric(owned) == 1)
    owner, peer = (a, b) if a.metric(owned) == 1 else (b, a)
    _produce(kafka_bootstrap, topic, messages[:380])
    alerts_topic = f"alerts-{tag}"
    firing = _read(kafka_bootstrap, alerts_topic, lambda seen: any(b'"firing"' in m.value for m in seen))
    episode = json.loads(next(m.value for m in firing if b'"firing"' in m.value))["id"]
    group = config.source.group_id if config.source else ""
    # Committed well past the episode's start: the peer will not see where it began, only the saved state can tell.
    _wait(lambda: _committed(kafka_bootstrap, group, topic, 1) >= 340)
    owner.stop(signal.SIGKILL)
    _wait(lambda: peer.metric(owned) == 1, timeout_s=60)
    _produce(kafka_bootstrap, topic, messages[380:])
    got = _read(kafka_bootstrap, alerts_topic, lambda seen: any(b'"resolved"' in m.value for m in seen), timeout_s=90)
    events = [(json.loads(m.value)["status"], json.loads(m.value)["id"]) for m in got]
    assert ("resolved", episode) in events
    assert {i for status, i in events if status == "firing"} == {episode}, "the peer fired the episode again"


@pytest.fixture
def own_broker(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[ModuleType, list[Any]]]:
    """A broker of this test alone (it gets killed and restarted): (scripts/kafka_broker.py, its Broker)."""
    del kafka_bootstrap  # only for the `kafka` mark and the shared checks that Java and the jars are there
    script = load_script("kafka_broker.py", name="kafka_broker")
    broker = script.start_broker(tmp_path / "own-kafka")
    state = [broker]
    yield script, state
    script.stop_broker(state[-1])


def test_serve_rides_out_a_broker_crash_says_so_on_readyz_and_resumes_after_the_restart(
    client_library: str,
    own_broker: tuple[ModuleType, list[Any]], sensor_bundle: Path, sensor_data: tuple[Path, Path],
    daemons: Callable[[Config, str], Daemon],
) -> None:  # fmt: skip
    script, brokers = own_broker
    bootstrap = brokers[0].bootstrap
    topic = f"ae-monitor-test-{uuid.uuid4().hex[:12]}"
    config = _serve_config(bootstrap, topic, sensor_bundle, client=client_library, kafka={"connect_timeout_s": 3},
                           source={"rebalance_stall_s": 4})  # fmt: skip
    messages = _messages(sensor_data[1] / "pump-1.csv", "pump-1", config, slice(0, 400))
    daemon = daemons(config, "serve")
    _wait(lambda: _http(daemon.url + "/readyz")[0] == 200)
    _produce(bootstrap, topic, messages[:200])
    _wait(lambda: _scored(daemon) >= 200 - 29)

    script.kill_broker(brokers[0])
    _wait(lambda: _http(daemon.url + "/readyz")[0] == 503, timeout_s=60)
    assert "source" in _http(daemon.url + "/readyz")[1]
    time.sleep(15)  # several stall checks and failed reconnects: serve must still be there
    assert daemon.proc.poll() is None, daemon.log.read_text()[-3000:]
    assert _http(daemon.url + "/healthz")[0] == 200

    brokers.append(script.restart_broker(brokers[0]))
    _wait(lambda: _http(daemon.url + "/readyz")[0] == 200, timeout_s=90)
    _produce(bootstrap, topic, messages[200:])
    _wait(lambda: _scored(daemon) >= 400 - 29, timeout_s=90)
    code, _ = daemon.stop()
    assert code == 0
