"""Kafka over TLS and with SASL/SCRAM, against a real broker: a CA and a broker certificate made here with openssl,
an SSL listener and a SASL_SSL listener (SCRAM-SHA-512, the user created when the storage is formatted). Records
travel through ae_monitor's own client settings (`[kafka]` + `extra`), as docs/security.md configures them.

The broker is started by this module (not the shared session broker, which is PLAINTEXT only) with the helpers
of scripts/kafka_broker.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_fixture import SKIP_ENV
from script_loader import load_script

from ae_monitor.config import REDACTED, Config, KafkaConnectionConfig, dump_config, load_config
from ae_monitor.kafka_client import client_configs
from ae_monitor.sinks.kafka import producer_factory, send_all

pytestmark = [pytest.mark.kafka, pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]

USER = "ae-monitor"
PASSWORD = "scram-secret-0123456789"  # a test broker's only user; never a real secret

PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller}
listeners=PLAINTEXT://{host}:{plain},SSL://{host}:{ssl},SASL_SSL://{host}:{sasl_ssl},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{plain},SSL://{host}:{ssl},SASL_SSL://{host}:{sasl_ssl}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
log.dirs={data}
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
# TLS: the broker's key and certificate chain as one PEM file (an unencrypted PKCS#8 key, then the certificate).
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.client.auth=none
# SCRAM-SHA-512 on the SASL_SSL listener; the user is created by `kafka-storage format --add-scram`.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
"""


@dataclass(frozen=True)
class SecureBroker:
    ssl: str  # "127.0.0.1:PORT" of the SSL listener
    sasl_ssl: str  # of the SASL_SSL (SCRAM-SHA-512) listener
    ca: Path  # the CA that signed the broker's certificate
    other_ca: Path  # a CA that did not


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(name: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=ae-monitor test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=cwd)  # fmt: skip


def _make_certificates(cwd: Path) -> Path:
    """A CA, a broker certificate for 127.0.0.1 signed by it, and a second, unrelated CA; returns the keystore."""
    _make_ca("ca", cwd)
    _make_ca("other-ca", cwd)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "broker.key", cwd=cwd)
    _openssl("req", "-new", "-key", "broker.key", "-subj", "/CN=localhost", "-out", "broker.csr", cwd=cwd)
    (cwd / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", "broker.pem", "-extfile", "ext.cnf", cwd=cwd)  # fmt: skip
    keystore = cwd / "broker-keystore.pem"
    keystore.write_text((cwd / "broker.key").read_text() + (cwd / "broker.pem").read_text())
    return keystore


def _start(script: ModuleType, workdir: Path) -> tuple[int, dict[str, int]]:
    ports = {name: script._free_port() for name in ("plain", "ssl", "sasl_ssl", "controller")}
    properties = workdir / "server.properties"
    properties.write_text(PROPERTIES.format(host=script.HOST, data=workdir / "data",
                                            keystore=_make_certificates(workdir), **ports))  # fmt: skip
    log_config = workdir / "log4j2.properties"
    log_config.write_text(script.LOG4J2_PROPERTIES.format(log_file=workdir / "broker.log"))
    scram = f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"
    fmt = ["kafka.tools.StorageTool", "format", "-t", script._cluster_id(), "-c", str(properties), "--standalone",
           "--add-scram", scram]  # fmt: skip
    subprocess.run(script._java(*fmt, log_config=log_config), check=True, capture_output=True, timeout=120)
    with (workdir / "stdout.log").open("wb") as stdout:
        process = subprocess.Popen(script._java("kafka.Kafka", str(properties), log_config=log_config),
                                   stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT, cwd=workdir,
                                   start_new_session=True)  # fmt: skip
    script._CHILDREN[process.pid] = process
    return process.pid, ports


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    script = load_script("kafka_broker.py", name="kafka_broker")
    missing = script.missing_tools()
    if missing:  # as tests/kafka_fixture.py does: a failure, unless AE_MONITOR_SKIP_KAFKA=1 asks for a skip
        reason = f"the TLS/SASL tests start a Kafka broker, and {' and '.join(missing)} is not installed"
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"{SKIP_ENV}=1: {reason}")
        pytest.fail(f"{reason}; {SKIP_ENV}=1 skips them instead", pytrace=False)
    script.fetch_jars()
    workdir = Path(tempfile.mkdtemp(prefix="ae-monitor-kafka-tls-"))
    pid, ports = _start(script, workdir)
    broker = script.Broker(f"{script.HOST}:{ports['plain']}", pid, workdir)
    try:
        deadline = time.monotonic() + script.START_TIMEOUT_S
        while not script.answers_api_versions(script.HOST, ports["plain"]):
            if time.monotonic() > deadline or script._CHILDREN[pid].poll() is not None:
                pytest.fail(f"the TLS test broker did not start:\n{script._log_tail(workdir)}", pytrace=False)
            time.sleep(0.2)
        host = script.HOST
        yield SecureBroker(f"{host}:{ports['ssl']}", f"{host}:{ports['sasl_ssl']}", workdir / "ca.pem",
                           workdir / "other-ca.pem")  # fmt: skip
    finally:
        script.stop_broker(broker)


def _config(toml: str, tmp_path: Path, client: str, environ: dict[str, str] | None = None) -> Config:
    """The config of `toml` with `kafka.client = client` (the same kafka-python names map to librdkafka's)."""
    path = tmp_path / "kafka.toml"
    path.write_text(toml.replace("[kafka]\n", f'[kafka]\nclient = "{client}"\n', 1))
    return load_config(path, environ=environ or {})


def _round_trip(conn: KafkaConnectionConfig) -> list[bytes]:
    """Send three records with ae_monitor's producer settings and read them back with its client settings."""
    topic = f"ae-monitor-tls-{uuid.uuid4().hex[:12]}"
    producer = producer_factory(conn)()
    try:
        send_all(producer, topic, [(b"s", f"record {i}".encode(), []) for i in range(3)], sink="test", timeout_s=30)
    finally:
        producer.close()
    consumer = KafkaConsumer(**client_configs(conn), auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < 3 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values += [r.value for r in records]
        return values
    finally:
        consumer.close()


def _refusal(config_path: Path, environ: dict[str, str] | None = None) -> str:
    """What building a producer from the config at `config_path` stops with, in a process of its own: kafka-python
    leaves a failed client's sockets to the garbage collector, and the log records pytest keeps hold them past the
    test (a ResourceWarning later, an error under `filterwarnings = error`)."""
    code = "\n".join(["import sys", "from ae_monitor.config import load_config",
                       "from ae_monitor.sinks.kafka import producer_factory",
                       "producer_factory(load_config(sys.argv[1]).kafka)()"])  # fmt: skip
    env = {**os.environ, **(environ or {}), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code, str(config_path)], capture_output=True, text=True,
                            env=env, timeout=120, check=False)  # fmt: skip
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def test_records_travel_over_tls_to_a_broker_whose_certificate_the_site_ca_signed(
    secure_broker: SecureBroker, tmp_path: Path, client_library: str
) -> None:
    config = _config(f'[kafka]\nbootstrap_servers = ["{secure_broker.ssl}"]\nsecurity_protocol = "SSL"\n'
                     f'[kafka.extra]\nssl_cafile = "{secure_broker.ca}"\n', tmp_path, client_library)  # fmt: skip
    assert _round_trip(config.kafka) == [b"record 0", b"record 1", b"record 2"]


def test_a_broker_certificate_from_another_ca_is_refused(
    secure_broker: SecureBroker, tmp_path: Path, client_library: str
) -> None:
    _config(f'[kafka]\nbootstrap_servers = ["{secure_broker.ssl}"]\nsecurity_protocol = "SSL"\n'
            f'connect_timeout_s = 3\n[kafka.extra]\nssl_cafile = "{secure_broker.other_ca}"\n', tmp_path,
            client_library)  # fmt: skip
    refusal = _refusal(tmp_path / "kafka.toml")
    assert "refused the producer's credentials or TLS handshake" in refusal or "cannot reach Kafka" in refusal
    if client_library == "confluent":  # librdkafka always reports the failed handshake itself
        assert "certificate verify failed" in refusal


SCRAM_TOML = """\
[kafka]
bootstrap_servers = ["{bootstrap}"]
security_protocol = "SASL_SSL"
connect_timeout_s = {timeout}
[kafka.extra]
ssl_cafile = "{ca}"
sasl_mechanism = "SCRAM-SHA-512"
sasl_plain_username = "{user}"
"""


def test_scram_over_tls_authenticates_with_the_password_from_the_environment_and_never_prints_it(
    secure_broker: SecureBroker, tmp_path: Path, client_library: str
) -> None:
    toml = SCRAM_TOML.format(bootstrap=secure_broker.sasl_ssl, timeout=30, ca=secure_broker.ca, user=USER)
    config = _config(toml, tmp_path, client_library, {"AE_MONITOR_KAFKA__EXTRA__SASL_PLAIN_PASSWORD": PASSWORD})
    assert _round_trip(config.kafka) == [b"record 0", b"record 1", b"record 2"]
    dumped = dump_config(config)
    assert PASSWORD not in dumped
    assert f'sasl_plain_password = "{REDACTED}"' in dumped


def test_a_wrong_scram_password_is_refused(secure_broker: SecureBroker, tmp_path: Path, client_library: str) -> None:
    toml = SCRAM_TOML.format(bootstrap=secure_broker.sasl_ssl, timeout=3, ca=secure_broker.ca, user=USER)
    _config(toml, tmp_path, client_library)
    refusal = _refusal(tmp_path / "kafka.toml", {"AE_MONITOR_KAFKA__EXTRA__SASL_PLAIN_PASSWORD": "not-the-password"})
    # Named when kafka-python logs the broker's refusal before the connection drops (usually; not always).
    assert "refused the producer's credentials or TLS handshake" in refusal or "cannot reach Kafka" in refusal
    if client_library == "confluent":  # librdkafka always reports the refusal itself
        assert "Authentication failed" in refusal
    assert "not-the-password" not in refusal
