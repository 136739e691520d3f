"""The Kafka client choice (`kafka.client`) and how `[kafka]` settings reach librdkafka (no broker needed; the
contract of both clients against a real broker: test_sinks_kafka.py, test_serve.py, test_kafka_security.py)."""

from __future__ import annotations

import pytest

from ae_monitor.config import KafkaConnectionConfig
from ae_monitor.errors import ConfigError
from ae_monitor.kafka_client import build_client
from ae_monitor.kafka_client.confluent import properties


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


def test_a_kafka_python_setting_librdkafka_has_no_name_for_stops_startup_naming_the_key() -> None:
    conn = KafkaConnectionConfig(client="confluent", extra={"api_version_auto_timeout_ms": 5000})
    with pytest.raises(ConfigError, match=r"kafka\.extra\.api_version_auto_timeout_ms"):
        build_client(conn)
