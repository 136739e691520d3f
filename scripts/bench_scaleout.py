"""Scale-out on one machine: the sensor rate of 1, 2, ... `ae-monitor serve` processes in ONE consumer group.

One broker (scripts/kafka_broker.py) and one topic of `--partitions` partitions holding a backlog of single-sample
JSON records of `--streams` streams (produced once, with librdkafka, before any serve starts). For each process
count N, a fresh consumer group of N serve subprocesses (the demo bundle, kafka-python client unless `--client`)
reads the same backlog from the start; once every process is ready and the group has all partitions, the records
all processes count during `--measure-s` seconds give the group's rate. Printed as records/s and as the ratio to
one process, measured in the same run (machines here are shared and noisy: compare ratios, not runs).

    .venv/bin/python scripts/bench_scaleout.py [--processes 1 2] [--records 3000000] [--json FILE]

The broker, the producer and every serve share this machine's cores: on 2 cores, N = 2 is the most that can help.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import Producer
from kafka import KafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kafka_broker
from chaos import Serve, _train, _wait

from ae_monitor.config import config_from_dict, dump_config
from ae_monitor.jobs.demo import CHANNELS, DEMO_CONFIG, START_S


@dataclass
class Figure:
    processes: int
    records_per_s: float
    ratio_to_one: float
    partitions_per_process: float


def produce_backlog(bootstrap: str, topic: str, *, records: int, streams: int) -> None:
    """`records` single-sample records, streams interleaved, keyed by stream (librdkafka: fast enough to build a
    backlog of millions in seconds)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    values = ",".join(f'"{c}": {v}' for c, v in zip(CHANNELS, (0.5, 11.0, 2.7, 49.0), strict=True))
    for i in range(records):
        stream, row = i % streams, i // streams
        body = f'{{"ts": {START_S + row}, "values": {{{values}}}}}'.encode()
        while True:
            try:
                producer.produce(topic, key=f"pump-{stream}".encode(), value=body)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 100_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the backlog was not fully acknowledged")


def group_rate(bootstrap: str, topic: str, bundle: Path, workdir: Path, *, processes: int, partitions: int,
               measure_s: float, client: str, backlog: int) -> float:  # fmt: skip
    """Records per second of `processes` serve processes in one new group, once all of them are ready."""
    group = f"scale-{processes}-{uuid.uuid4().hex[:8]}"
    config = config_from_dict({
        **DEMO_CONFIG,
        "kafka": {"bootstrap_servers": [bootstrap], "connect_timeout_s": 10, "client": client},
        "source": {"topics": [topic], "group_id": group, "start_from": "earliest", "session_timeout_ms": 10000},
        "routes": [{"match": "*", "bundle_path": str(bundle)}],
        "service": {"http_port": 0, "log_format": "text", "shutdown_grace_s": 10},
    })  # fmt: skip
    path = workdir / f"{group}.toml"
    path.write_text(dump_config(config))
    serves: list[Serve] = []
    try:
        for i in range(processes):
            serves.append(Serve(path, workdir / f"{group}-{i}.log"))

        def settled() -> bool:
            assigned = [s.metric("ae_monitor_partitions_assigned") for s in serves]
            return all(s.ready() for s in serves) and sum(assigned) == partitions and all(a > 0 for a in assigned)

        _wait(settled, 180, f"{processes} serve process(es) to share the {partitions} partitions")

        def counted() -> float:
            return sum(s.metric("ae_monitor_records_total") for s in serves)

        before, started = counted(), time.monotonic()
        time.sleep(measure_s)
        after, seconds = counted(), time.monotonic() - started
        if after >= backlog:
            raise RuntimeError(f"the backlog ran out while {processes} process(es) were measured: raise --records")
        return (after - before) / seconds
    finally:
        for serve in serves:
            with contextlib.suppress(Exception):
                serve.stop()


def run(args: argparse.Namespace, workdir: Path) -> list[Figure]:
    broker = None if args.bootstrap else kafka_broker.start_broker(workdir / "kafka")
    try:
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        topic = f"scale-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics({topic: {"num_partitions": args.partitions, "replication_factor": 1}})
        admin.close()
        bundle = _train(workdir)
        produce_backlog(bootstrap, topic, records=args.records, streams=args.streams)
        rates = {}
        for n in args.processes:
            rates[n] = group_rate(bootstrap, topic, bundle, workdir, processes=n, partitions=args.partitions,
                                  measure_s=args.measure_s, client=args.client, backlog=args.records)  # fmt: skip
    finally:
        if broker is not None:
            kafka_broker.stop_broker(broker)
    one = rates.get(1, rates[min(rates)])
    return [Figure(n, rate, rate / one, args.partitions / n) for n, rate in rates.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic")
    parser.add_argument("--records", type=int, default=3_000_000, help="backlog size (enough for every run)")
    parser.add_argument("--streams", type=int, default=400, help="streams interleaved in the backlog")
    parser.add_argument("--measure-s", type=float, default=10.0, help="measured seconds per process count")
    parser.add_argument("--client", choices=("kafka-python", "confluent"), default="kafka-python")
    parser.add_argument("--bootstrap", help="use this running broker instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep the broker, bundle and serve logs here (default: temp)")
    args = parser.parse_args(argv)
    if any(n < 1 or n > args.partitions for n in args.processes):
        parser.error("each process count must be between 1 and --partitions (an idle member gets no partition)")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ae-monitor-scale-")))
        figures = run(args, workdir)
    print(f"{'processes':>9}  {'records/s':>11}  {'x one':>6}  {'partitions each':>15}")
    for f in figures:
        print(f"{f.processes:>9}  {f.records_per_s:>11,.0f}  {f.ratio_to_one:>6.2f}  {f.partitions_per_process:>15.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
