"""pytest plugin: a real Apache Kafka broker for the integration tests (Kafka is never mocked).

`kafka_bootstrap` is the broker's address for the whole session: `AE_MONITOR_TEST_KAFKA=host:port` when set (an
existing broker), otherwise a throwaway single-node broker that `scripts/kafka_broker.py` starts on 127.0.0.1 once
per session and stops at its end. Without Java (or, while the jars are missing, Maven) the tests that need it fail
with the reason; `AE_MONITOR_SKIP_KAFKA=1` turns that failure into a skip.

`kafka_topic(partitions)` creates a uniquely named topic, deleted after the test; `kafka_client(cls, **configs)`
builds a KafkaProducer, KafkaConsumer or KafkaAdminClient for the broker (retrying while it does not answer yet) and
closes it after the test. Every test that uses `kafka_bootstrap` is marked `kafka`, so `-m "not kafka"` leaves them
out.

`client_library` runs a test once per Kafka library ae_monitor can use (`kafka.client`): kafka-python and confluent
(librdkafka), so the contract of the source and the sinks is proven against each. The test-side helpers above stay
on kafka-python: they are the yardstick, not the code under test.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import pytest
from script_loader import load_script

EXISTING_BROKER_ENV = "AE_MONITOR_TEST_KAFKA"
SKIP_ENV = "AE_MONITOR_SKIP_KAFKA"

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def _broker_script() -> ModuleType:
    """scripts/kafka_broker.py, imported by path (scripts/ is not a package)."""
    return load_script("kafka_broker.py", name="kafka_broker")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address ("host:port") of a real Kafka broker, for the whole session."""
    existing = os.environ.get(EXISTING_BROKER_ENV, "").strip()
    if existing:
        yield existing
        return
    script = _broker_script()
    missing = script.missing_tools()
    if missing:
        reason = (
            f"the Kafka tests need a real broker, and {' and '.join(missing)} is not installed to start one "
            f"(install a JDK 17+ and Maven, or point {EXISTING_BROKER_ENV}=host:port at a running broker)"
        )
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"{SKIP_ENV}=1: {reason}")
        pytest.fail(f"{reason}; {SKIP_ENV}=1 skips them instead", pytrace=False)
    try:
        broker = script.start_broker(tmp_path_factory.mktemp("kafka"))
    except script.BrokerError as error:
        pytest.fail(f"could not start the test Kafka broker: {error}", pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        script.stop_broker(broker)


def connect(factory: Callable[[], T], *, attempts: int = 5, first_delay_s: float = 0.5) -> T:
    """`factory()`, retried with backoff: kafka-python 3.x clients raise KafkaTimeoutError when no broker answers."""
    from kafka.errors import KafkaError

    delay_s = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return factory()
        except KafkaError:
            if attempt == attempts:
                raise
            time.sleep(delay_s)
            delay_s *= 2
    raise AssertionError("unreachable")


CLIENT_LIBRARIES = ("kafka-python", "confluent")


@pytest.fixture(params=CLIENT_LIBRARIES)
def client_library(request: pytest.FixtureRequest) -> str:
    """The value of `kafka.client` for this run of the test."""
    return str(request.param)


@pytest.fixture
def kafka_client(kafka_bootstrap: str) -> Iterator[Callable[..., Any]]:
    """A factory: `kafka_client(KafkaConsumer, "topic", group_id="g")` -> a client, closed after the test."""
    clients: list[Any] = []

    def build(client_class: Callable[..., T], *args: Any, **configs: Any) -> T:
        client = connect(lambda: client_class(*args, bootstrap_servers=kafka_bootstrap, **configs))
        clients.append(client)
        return client

    yield build
    for client in reversed(clients):
        client.close()  # closing a closed client is a no-op


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """A factory: `kafka_topic(3)` creates a uniquely named topic with 3 partitions, deleted after the test."""
    from kafka import KafkaAdminClient

    admin = connect(lambda: KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="ae-monitor-tests"))
    created: list[str] = []

    def create(partitions: int = 1, *, prefix: str = "ae-monitor-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        spec = {name: {"num_partitions": partitions, "replication_factor": 1}}
        admin.create_topics(spec, wait_for_metadata=True)  # every partition has a leader on return
        created.append(name)
        return name

    try:
        yield create
        if created:
            admin.delete_topics(created)
    finally:
        admin.close()
