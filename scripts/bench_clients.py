"""The two Kafka clients side by side, through a real local broker, in one run: each library's bare consume + decode
ceiling and `ae-monitor serve`'s rate with it (`kafka.client`), on the same topic (compare the ratios).

1. ceiling: scripts/kafka_ceiling.py in a bare subprocess (the library and the standard library only) reads the N
   records of scripts/bench_serve.py's sensor topic (~130-byte single-sample JSON records, streams round-robin, one
   partition) and `json.loads` each value: kafka-python's `poll(max_records)`, confluent-kafka's
   `consume(max_poll_records)`. Rate = N / (first non-empty poll -> last record parsed).
2. serve: `ae_monitor.serve.app.serve` in a thread of this process, as bench_serve.py measures it (production
   sinks, fresh consumer group, earliest offset), once with each client. Rate = N / (first record counted -> last
   window scored).

Each figure is the median of `--repeat` runs, the clients alternating within a round, so that a busy moment of the
machine does not land on one client only. Goals (issue 14): serve >= 90 % of its own client's ceiling; with
librdkafka, serve >= 2x the rate it reaches with kafka-python.

    .venv/bin/python scripts/bench_clients.py [--records 200000] [--streams 200] [--repeat 3] [--bootstrap HOST:PORT]
                                              [--bundle DIR] [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ae_monitor.model.bundle import load_bundle

HERE = Path(__file__).resolve().parent
CLIENTS = ("kafka-python", "confluent")
GOAL_SERVE_RATIO = 0.90
GOAL_SPEEDUP = 2.0


def _bench_serve() -> ModuleType:
    """scripts/bench_serve.py, imported by path (scripts/ is not a package): its topic, records and serve probe."""
    spec = importlib.util.spec_from_file_location("_bench_serve_for_clients", HERE / "bench_serve.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bs = _bench_serve()
ROW_CEILING = "ceiling {}: consume + json.loads"
ROW_SERVE = "serve {}: sensor records"
ROW_CEILING_RATIO = "ceiling confluent / kafka-python"
ROW_SPEEDUP = "serve confluent / kafka-python"
ROWS = (*(ROW_CEILING.format(c) for c in CLIENTS), ROW_CEILING_RATIO, *(ROW_SERVE.format(c) for c in CLIENTS),
        ROW_SPEEDUP)  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="sensor records (200000)")
    parser.add_argument("--streams", type=int, default=200, help="sensor streams, round-robin (200)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is their median (3)")
    parser.add_argument("--bootstrap", help="use this broker (host:port) instead of starting one")
    parser.add_argument("--bundle", type=Path, help="sensor bundle to serve (default: train a small one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test), figures not meaningful")
    parser.add_argument("--profile", type=Path, help="cProfile serve's thread in one extra run per client into DIR")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.streams, args.repeat = 6_000, 20, 1
    if min(args.records, args.streams, args.repeat) < 1:
        raise SystemExit("--records, --streams and --repeat must be at least 1")
    return args


def ceiling(bootstrap: str, topic: str, n: int, max_poll: int, client: str) -> float:
    """The bare subprocess's rate (msg/s) with `client`."""
    out = subprocess.run([sys.executable, str(bs.CEILING_SCRIPT), bootstrap, topic, str(n), "--max-poll-records",
                          str(max_poll), "--client", client], capture_output=True, text=True, check=True,
                         timeout=180)  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1])["msg_per_s"])


def serve_rate(bootstrap: str, topic: str, bundle: Path, windows: int, n: int, client: str, tag: str,
               profile: Path | None = None) -> float:  # fmt: skip
    config = bs.serve_config(bootstrap, topic, bundle, tag)
    config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"client": client})})
    span = bs.serve_span(config, windows, profile)
    return float(n / span.wall_s)


def measure(bootstrap: str, topics: Any, bundle: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Every round: both ceilings, then serve with both clients; returns the rates by row name."""
    loaded = load_bundle(bundle)
    channels, window = loaded.extractor.group_names, loaded.features.sensor.window_samples
    rows = max(1, args.records // args.streams)
    n, windows = rows * args.streams, args.streams * max(0, rows - window + 1)
    topic = topics.create("clients")
    bs.produce(bootstrap, topic, bs.throughput_messages(channels, args.streams, rows))
    gc.collect()
    max_poll = bs.config_source_max_poll()
    rates: dict[str, list[float]] = {name: [] for name in ROWS}
    for round_ in range(args.repeat):
        order = CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]
        for client in order:
            rates[ROW_CEILING.format(client)].append(ceiling(bootstrap, topic, n, max_poll, client))
        for client in order:
            tag = f"{client}-{round_}-{topics.run_id}"
            topics.forget_later(*bs.output_topics(topic))
            rates[ROW_SERVE.format(client)].append(serve_rate(bootstrap, topic, bundle, windows, n, client, tag))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items() if v), flush=True)
    for client in CLIENTS if args.profile is not None else ():  # profiled runs are slower: not in the figures
        tag = f"{client}-profile-{topics.run_id}"
        serve_rate(bootstrap, topic, bundle, windows, n, client, tag, args.profile / f"serve-{client}.pstats")
    return rates


def table(rates: dict[str, list[float]], n: int) -> list[Any]:
    median = {name: statistics.median(values) for name, values in rates.items() if values}
    found = []
    for client in CLIENTS:
        found.append(bs.Row(ROW_CEILING.format(client), median[ROW_CEILING.format(client)], "msg/s",
                            note=f"{n:,} records, median of {len(rates[ROW_CEILING.format(client)])}"))  # fmt: skip
    ceiling_ratio = median[ROW_CEILING.format("confluent")] / median[ROW_CEILING.format("kafka-python")]
    found.append(bs.Row(ROW_CEILING_RATIO, ceiling_ratio, "x"))
    for client in CLIENTS:
        rate, top = median[ROW_SERVE.format(client)], median[ROW_CEILING.format(client)]
        found.append(bs.Row(ROW_SERVE.format(client), rate, "msg/s", f">= {GOAL_SERVE_RATIO:.0%} of its ceiling",
                            f"{rate / top:.1%}", rate / top >= GOAL_SERVE_RATIO,
                            "runs " + ", ".join(f"{v:,.0f}" for v in rates[ROW_SERVE.format(client)])))  # fmt: skip
    speedup = median[ROW_SERVE.format("confluent")] / median[ROW_SERVE.format("kafka-python")]
    found.append(bs.Row(ROW_SPEEDUP, speedup, "x", f">= {GOAL_SPEEDUP:g}x", f"{speedup:.2f}x", speedup >= GOAL_SPEEDUP))
    return found


def format_value(row: Any) -> str:
    return f"{row.value:.2f}x" if row.unit == "x" else bs.format_value(row)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = bs.environment()
    print(f"python {env['python']} on {env['machine']}; load average {env['load_average_1m_5m']}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    try:
        with bs.kafka_broker(args.bootstrap) as bootstrap:
            topics = bs.Topics(bootstrap)
            try:
                settings = bs.QUICK if args.quick else bs.DEFAULTS
                bundle = args.bundle or bs.train_sensor_bundle(workdir, settings)
                rates = measure(bootstrap, topics, bundle, args)
            finally:
                topics.close()
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(workdir, ignore_errors=True)
    n = max(1, args.records // args.streams) * args.streams
    rows = table(rates, n)
    header = f"{'figure':<42} {'value':>14}  {'goal':<22} {'ratio':>8}  {'':4}  note"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row.name:<42} {format_value(row):>14}  {row.goal:<22} {row.ratio:>8}  {bs.verdict(row):4}  {row.note}")
    if args.json is not None:
        data = {"environment": env, "records": n, "rates": rates, "rows": [asdict(row) for row in rows]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
