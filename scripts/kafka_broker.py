#!/usr/bin/env python3
"""A throwaway single-node Apache Kafka broker (KRaft, combined broker + controller) on 127.0.0.1.

For development and the integration tests: Kafka is never mocked. The broker jars come from Maven Central through
`scripts/kafka/pom.xml` (there is no Kafka tarball on these machines); Java 17 and Maven are needed. Standard library
only, so it runs with any python3:

    python3 scripts/kafka_broker.py fetch     # copy the jars into scripts/kafka/libs (quick when they are there)
    python3 scripts/kafka_broker.py start     # prints the bootstrap address, e.g. 127.0.0.1:40123
    python3 scripts/kafka_broker.py status
    python3 scripts/kafka_broker.py stop

`start` formats KRaft storage in a fresh temp dir, runs the broker there on two free loopback ports (its log is
`broker.log` in that dir), waits until it answers an ApiVersions request, and records pid, address and dir in
`.kafka-test/broker.json`; `stop` ends it (SIGTERM, then SIGKILL) and removes the dir. The pytest plugin
`tests/kafka_fixture.py` imports this file and calls `start_broker` / `stop_broker` instead.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
LIBS = HERE / "kafka" / "libs"
# The hash of the pom the jars in LIBS were copied for: a changed pom (say a version bump) fetches again.
LIBS_STAMP = LIBS / ".pom-sha256"
STATE_FILE = HERE.parent / ".kafka-test" / "broker.json"

HOST = "127.0.0.1"
# A small heap, and the quickest start on two cores: the serial GC and C1 only (2.9 s instead of 4.4-5.4 s).
JVM_OPTIONS = ["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
PORT_RETRIES = 3  # a free port can be taken by someone else between our probe and the broker's bind

SERVER_PROPERTIES = """\
# Combined broker + controller, one node, loopback only: a test broker, not a production one.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=true
# One replica and one partition for the internal topics: creating 50 of them slows the first group or transaction.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
# Tests join groups often and with short sessions.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# The request logger and the state change logger are noisy at INFO.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why and where to look."""


class _PortTakenError(BrokerError):
    """Someone else bound one of the free ports before the broker did: try again with others."""


@dataclass(frozen=True)
class Broker:
    """A running broker: its bootstrap address ("127.0.0.1:PORT"), the JVM's pid and its working dir."""

    bootstrap: str
    pid: int
    dir: Path

    @property
    def log_file(self) -> Path:
        return self.dir / "broker.log"


# Brokers started by this process, kept so that their Popen objects are waited on (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# --- jars -------------------------------------------------------------------------------------------------------


def _pom_hash() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_present() -> bool:
    """Whether scripts/kafka/libs holds the jars for the current pom."""
    return LIBS_STAMP.is_file() and LIBS_STAMP.read_text().strip() == _pom_hash()


def missing_tools() -> list[str]:
    """The programs still needed to start a broker here: `java` always, `mvn` only while the jars are missing."""
    needed = ["java"] if jars_present() else ["java", "mvn"]
    return [tool for tool in needed if shutil.which(tool) is None]


def fetch_jars() -> None:
    """Copy the broker jars into scripts/kafka/libs with Maven, unless they are there for the current pom."""
    if jars_present():
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (`mvn`) is not installed; it fetches the Kafka broker jars (apt-get install maven)")
    with POM.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time: `make` and a test run may both ask
        if jars_present():
            return
        shutil.rmtree(LIBS, ignore_errors=True)
        command = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "package"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise BrokerError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{output}")
        LIBS_STAMP.write_text(_pom_hash() + "\n")


# --- start --------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _cluster_id() -> str:
    """A random cluster id as `kafka-storage.sh random-uuid` makes it (base64url, no padding, no leading '-')."""
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java(*args: str, log_config: Path) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "Java is not installed; Kafka 4.x brokers need Java 17 or later (apt-get install openjdk-17-jre)"
        )
    return [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={log_config}", "-cp", f"{LIBS}/*", *args]


def _write_config(workdir: Path, port: int, controller_port: int) -> tuple[Path, Path]:
    properties = workdir / "server.properties"
    properties.write_text(
        SERVER_PROPERTIES.format(host=HOST, port=port, controller_port=controller_port, data_dir=workdir / "data")
    )
    log_config = workdir / "log4j2.properties"
    log_config.write_text(LOG4J2_PROPERTIES.format(log_file=workdir / "broker.log"))
    return properties, log_config


def _format_storage(properties: Path, log_config: Path) -> None:
    # --standalone goes with controller.quorum.bootstrap.servers (a dynamic quorum of this one controller).
    args = ["kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(properties), "--standalone"]
    result = subprocess.run(_java(*args, log_config=log_config), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(
            f"formatting Kafka storage failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data


def answers_api_versions(host: str, port: int, *, timeout_s: float = 2.0) -> bool:
    """Whether a Kafka broker at host:port answers an ApiVersions (v0) request without error."""
    client_id = b"ae-monitor-probe"
    correlation_id = 7
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id; the v0 body is empty.
    header = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            response = _recv_exactly(sock, size)
    except OSError:
        return False
    if len(response) < 6:
        return False
    answered_id: int
    error_code: int
    answered_id, error_code = struct.unpack(">ih", response[:6])
    return answered_id == correlation_id and error_code == 0


def _log_tail(workdir: Path, lines: int = 40) -> str:
    parts = []
    for name in ("stdout.log", "broker.log"):
        path = workdir / name
        if path.is_file() and path.stat().st_size:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- last lines of {path}:\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no log in {workdir})"


def _launch(workdir: Path, timeout_s: float) -> Broker:
    port, controller_port = _free_port(), _free_port()
    properties, log_config = _write_config(workdir, port, controller_port)
    _format_storage(properties, log_config)
    return _spawn(workdir, port, timeout_s)


def _spawn(workdir: Path, port: int, timeout_s: float) -> Broker:
    """Run the broker configured in `workdir` and return once it answers on `port`."""
    properties, log_config = workdir / "server.properties", workdir / "log4j2.properties"
    stdout_log = workdir / "stdout.log"
    seen = stdout_log.stat().st_size if stdout_log.is_file() else 0  # what earlier runs of this broker wrote
    with stdout_log.open("ab") as stdout:
        # A new session: the broker outlives `kafka_broker.py start` and ignores the terminal's Ctrl-C.
        process = subprocess.Popen(
            _java("kafka.Kafka", str(properties), log_config=log_config),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    broker = Broker(f"{HOST}:{port}", process.pid, workdir)
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if answers_api_versions(HOST, port):
            return broker
        if time.monotonic() > deadline:
            _terminate(broker.pid, STOP_TIMEOUT_S)
            raise BrokerError(
                f"the Kafka broker did not answer on {broker.bootstrap} in {timeout_s:g} s\n{_log_tail(workdir)}"
            )
        time.sleep(0.2)
    _CHILDREN.pop(process.pid, None)
    message = f"the Kafka broker exited with status {process.returncode}\n{_log_tail(workdir)}"
    with stdout_log.open("rb") as log:
        log.seek(seen)
        fresh = log.read().decode(errors="replace")
    broker_log = workdir / "broker.log"
    if broker_log.is_file():
        fresh += broker_log.read_text(errors="replace")
    if "Address already in use" in fresh:
        raise _PortTakenError(message)
    raise BrokerError(message)


def start_broker(workdir: Path | None = None, *, timeout_s: float = START_TIMEOUT_S) -> Broker:
    """Start a broker in `workdir` (a new temp dir when None) and return once it answers Kafka requests.

    Fetches the jars first when they are missing. `stop_broker` ends it and removes `workdir`.
    """
    fetch_jars()
    workdir = Path(tempfile.mkdtemp(prefix="ae-monitor-kafka-")) if workdir is None else workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PORT_RETRIES + 1):
        # What an attempt whose ports were taken left behind.
        shutil.rmtree(workdir / "data", ignore_errors=True)
        (workdir / "broker.log").unlink(missing_ok=True)
        try:
            return _launch(workdir, timeout_s)
        except _PortTakenError:
            if attempt == PORT_RETRIES:
                raise
    raise AssertionError("unreachable")


# --- stop ---------------------------------------------------------------------------------------------------------


def _is_broker(pid: int, workdir: Path | None = None) -> bool:
    """Whether `pid` is alive and (where /proc tells) the Kafka broker of `workdir`: never signal a stranger."""
    process = _CHILDREN.get(pid)
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    args = [arg.decode(errors="replace") for arg in cmdline]
    if "kafka.Kafka" not in args:
        return False
    return workdir is None or str(workdir / "server.properties") in args


def _wait_gone(pid: int, timeout_s: float) -> bool:
    process = _CHILDREN.get(pid)
    if process is not None:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        _CHILDREN.pop(pid, None)
        return True
    deadline = time.monotonic() + timeout_s
    while _is_broker(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (Kafka shuts down cleanly), then SIGKILL when it is still there after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)


def stop_broker(broker: Broker, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop the broker (SIGTERM, SIGKILL after `timeout_s`) and remove its dir. Stopping a stopped broker is fine."""
    if _is_broker(broker.pid, broker.dir):
        _terminate(broker.pid, timeout_s)
    shutil.rmtree(broker.dir, ignore_errors=True)


def kill_broker(broker: Broker) -> None:
    """SIGKILL the broker, as a crash would; its data dir stays for `restart_broker`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(broker.pid, signal.SIGKILL)
    _wait_gone(broker.pid, 10.0)
    process = _CHILDREN.pop(broker.pid, None)
    if process is not None:
        process.wait(timeout=10)


def restart_broker(broker: Broker, *, timeout_s: float = START_TIMEOUT_S) -> Broker:
    """Start a killed or stopped broker again on the same data dir and ports (a broker restart after a crash)."""
    if _is_broker(broker.pid, broker.dir):
        raise BrokerError(f"the broker {broker.bootstrap} (pid {broker.pid}) is still running")
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    while True:  # the killed broker's sockets may take a moment to free the ports
        try:
            return _spawn(broker.dir, port, max(1.0, deadline - time.monotonic()))
        except _PortTakenError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# --- the command line ---------------------------------------------------------------------------------------------


def _read_state(state_file: Path) -> Broker | None:
    try:
        state = json.loads(state_file.read_text())
        return Broker(state["bootstrap"], int(state["pid"]), Path(state["dir"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise BrokerError(f"{state_file} is not a broker state file ({error}); remove it") from error


def _write_state(state_file: Path, broker: Broker) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state = {"bootstrap": broker.bootstrap, "pid": broker.pid, "dir": str(broker.dir)}
    temp = state_file.with_suffix(".tmp")
    temp.write_text(json.dumps(state, indent=2) + "\n")
    temp.replace(state_file)


def _cmd_start(state_file: Path, timeout_s: float) -> int:
    running = _read_state(state_file)
    if running is not None and _is_broker(running.pid, running.dir):
        print(f"already running (pid {running.pid}, dir {running.dir})", file=sys.stderr)
        print(running.bootstrap)
        return 0
    started = time.monotonic()
    broker = start_broker(timeout_s=timeout_s)
    _write_state(state_file, broker)
    print(
        f"Kafka broker up in {time.monotonic() - started:.1f} s: pid {broker.pid}, log {broker.log_file}",
        file=sys.stderr,
    )
    print(broker.bootstrap)
    return 0


def _cmd_stop(state_file: Path) -> int:
    broker = _read_state(state_file)
    if broker is None:
        print(f"no broker recorded in {state_file}", file=sys.stderr)
        return 0
    stop_broker(broker)
    state_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state_file.parent.rmdir()  # only when empty
    print(f"stopped the broker on {broker.bootstrap} (pid {broker.pid})", file=sys.stderr)
    return 0


def _cmd_status(state_file: Path) -> int:
    broker = _read_state(state_file)
    if broker is None:
        print(f"not running (no {state_file})")
        return 1
    if not _is_broker(broker.pid, broker.dir):
        print(f"not running (pid {broker.pid} from {state_file} is gone)")
        return 1
    host, port = broker.bootstrap.rsplit(":", 1)
    answers = "answers" if answers_api_versions(host, int(port)) else "does NOT answer"
    print(f"running on {broker.bootstrap} (pid {broker.pid}, dir {broker.dir}); it {answers} ApiVersions")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["fetch", "start", "stop", "status"])
    parser.add_argument("--state", type=Path, default=STATE_FILE, help="state file (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="start timeout in seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch_jars()
            return 0
        if args.command == "start":
            return _cmd_start(args.state, args.timeout)
        if args.command == "stop":
            return _cmd_stop(args.state)
        return _cmd_status(args.state)
    except BrokerError as error:
        print(f"kafka_broker.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
