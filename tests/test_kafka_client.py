"""The Kafka client choice (`kafka.client`), how `[kafka]` settings reach librdkafka, and what the source reads of a
group that stopped answering (the rest of both clients' contract against a real broker: test_sinks_kafka.py,
test_serve.py, test_kafka_security.py, test_chaos.py)."""

from __future__ import annotations

import gc
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from script_loader import load_script

from ae_monitor.config import KafkaConnectionConfig, KafkaSourceConfig
from ae_monitor.errors import ConfigError
from ae_monitor.kafka_client import GroupConsumer, build_client
from ae_monitor.kafka_client.confluent import GroupConsumer as ConfluentGroupConsumer
from ae_monitor.kafka_client.confluent import properties
from ae_monitor.kafka_client.kafka_python import KafkaPythonClient


def test_kafka_python_is_the_default_client_and_confluent_is_chosen_in_config() -> None:
    assert build_client(KafkaConnectionConfig()).name == "kafka-python"
    assert build_client(KafkaConnectionConfig(client="confluent")).name == "confluent"


def test_the_kafka_python_names_of_tls_and_sasl_settings_become_librdkafka_properties() -> None:
    conn = KafkaConnectionConfig(
        bootstrap_servers=("k1:9094", "k2:9094"),
        security_protocol="SASL_SSL",
        client="confluent",
        extra={"ssl_cafile": "/ca.pem", "ssl_check_hostname": False, "sasl_mechanism": "SCRAM-SHA-512",
               "sasl_plain_username": "svc", "sasl_plain_password": "pw", "socket.keepalive.enable": True},
    )  # fmt: skip
    found = properties(conn)
    assert found["bootstrap.servers"] == "k1:9094,k2:9094"
    assert found["security.protocol"] == "sasl_ssl"
    assert found["ssl.ca.location"] == "/ca.pem"
    assert found["ssl.endpoint.identification.algorithm"] == "none"
    assert (found["sasl.mechanism"], found["sasl.username"], found["sasl.password"]) == ("SCRAM-SHA-512", "svc", "pw")
    assert found["socket.keepalive.enable"] is True  # a dotted key is a librdkafka property, passed as it is


def test_the_partition_fetch_size_reaches_each_clients_consumer_with_room_in_the_response() -> None:
    cfg = KafkaSourceConfig(topics=("audio",), max_partition_fetch_bytes=32 << 20)
    kafka_python = KafkaPythonClient(KafkaConnectionConfig()).consumer_configs(cfg)
    assert (kafka_python["max_partition_fetch_bytes"], kafka_python["fetch_max_bytes"]) == (32 << 20, 128 << 20)
    librdkafka = ConfluentGroupConsumer(cfg).settings()
    assert (librdkafka["max.partition.fetch.bytes"], librdkafka["fetch.max.bytes"]) == (32 << 20, 128 << 20)
    assert librdkafka["receive.message.max.bytes"] > librdkafka["fetch.max.bytes"]  # else librdkafka refuses it
    default = KafkaPythonClient(KafkaConnectionConfig()).consumer_configs(KafkaSourceConfig(topics=("x",)))
    assert (default["max_partition_fetch_bytes"], default["fetch_max_bytes"]) == (1 << 20, 50 << 20)  # the clients'


def test_a_kafka_python_setting_librdkafka_has_no_name_for_stops_startup_naming_the_key() -> None:
    conn = KafkaConnectionConfig(client="confluent", extra={"api_version_auto_timeout_ms": 5000})
    with pytest.raises(ConfigError, match=r"kafka\.extra\.api_version_auto_timeout_ms"):
        build_client(conn)


def test_a_consumer_whose_broker_died_reports_the_group_silent(
    kafka_bootstrap: str, client_library: str, tmp_path: Path
) -> None:
    """What `KafkaSource.stalled` reads when no commit is pending: the group coordinator's silence."""
    del kafka_bootstrap  # a broker of this test alone (it gets killed); this marks the test `kafka`
    script = load_script("kafka_broker.py", name="kafka_broker")
    broker = script.start_broker(tmp_path / "kafka")
    try:
        conn = KafkaConnectionConfig(bootstrap_servers=(broker.bootstrap,), client=client_library)
        cfg = KafkaSourceConfig(topics=(f"silence-{uuid.uuid4().hex[:8]}",), session_timeout_ms=6000)
        consumer = build_client(conn).consumer(cfg)
        try:
            consumer.subscribe(topics=cfg.topics, pattern=None, on_rebalance=lambda kind, partitions: None)
            _poll_until(consumer, lambda: bool(consumer.assignment()), timeout_s=30)
            assert (consumer.silence_s() or 0.0) < 5
            script.kill_broker(broker)
            _poll_until(consumer, lambda: (consumer.silence_s() or 0.0) > 2, timeout_s=30)
        finally:
            consumer.close()
    finally:
        script.stop_broker(broker)
        # kafka-python leaves the sockets of a client that lost its broker to the garbage collector: reaped here,
        # their ResourceWarnings would otherwise fail whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def _poll_until(consumer: GroupConsumer, condition: Callable[[], bool], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        consumer.poll(timeout_ms=100, max_records=100)
