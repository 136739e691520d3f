#!/usr/bin/env python3
"""Per-stream models at scale (issue 12, part 4): what each learned model costs in memory, loading and scoring.

One fresh interpreter per backend (torch, onnx) loads the same small sensor bundle N times, as N distinct bundles
(each holds its own weights, as N streams' learned models do), and reads its own RSS before and after; then it
scores one window per stream three ways, on the same windows:

    per stream   one call per stream through that stream's own model (what serve does with learned models today)
    one model    every window through ONE model in one batched call (the floor: a route bundle scoring them all)
    grouped      torch only: the N models' weights stacked and run as one vectorised call (torch.func.vmap over
                 functional_call), which is what "grouped weights" would give if serve did it

Figures are ratios against "one model" measured in the same run; RSS per model is (RSS after - before) / N.

With --engine it times serve's own path instead: `Engine.process` on micro-batches of one record per stream (W
windows each), N streams each scored by a learned model of its own (`Engine.score_stream_with`, as serve/learning.py
does), with `scoring.group_models` off (one network call per stream) and on (engine/grouped.py: one vmapped call
over the stacked weights), and the same streams all on the route's one model; it checks that both ways give the
same window scores, and reads the RSS the stacked weights add and the time the first grouped batch takes to stack.

    .venv/bin/python scripts/bench_stream_models.py                 # N = 1,000; about a minute
    .venv/bin/python scripts/bench_stream_models.py --models 200 --backends torch
    .venv/bin/python scripts/bench_stream_models.py --engine --models 100 1000 --windows 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def prepare_bundle(workdir: Path) -> Path:
    """A learned-model-sized bundle: the shipped sensor config (conv1d) on the demo pump's healthy rows, 3 epochs."""
    import numpy as np

    from ae_monitor.config import load_config
    from ae_monitor.jobs.data import Signal
    from ae_monitor.jobs.demo import CHANNELS, machine
    from ae_monitor.jobs.train import fit_bundle
    from ae_monitor.model.bundle import export_onnx, save_bundle

    config = load_config(REPO / "configs" / "sensor-skab.toml")
    sensor = config.features.sensor.model_copy(update={"channels": CHANNELS})
    training = config.training.model_copy(update={"epochs": 3})
    config = config.model_copy(update={"features": config.features.model_copy(update={"sensor": sensor}),
                                       "training": training})  # fmt: skip
    values = machine(2000, np.random.default_rng(0))[0]
    signal = Signal("pump", values, np.arange(len(values), dtype=np.float64), CHANNELS)
    path = save_bundle(fit_bundle(config, [signal], name="pump", progress=False).bundle, workdir / "pump")
    export_onnx(path)
    return path


def child(backend: str, bundle: str, models: int) -> None:
    import gc

    import numpy as np

    from ae_monitor.model.bundle import load_bundle
    from ae_monitor.scoring import scorer_for

    first = load_bundle(bundle, backend=backend)  # imports and one-off costs before the baseline reading
    scorer_for(first).score(np.zeros((1, int(np.prod(first.extractor.vector_shape))), dtype=np.float32))
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    bundles = [load_bundle(bundle, backend=backend) for _ in range(models)]
    load_s = (time.perf_counter() - started) / models
    scorers = [scorer_for(b) for b in bundles]
    gc.collect()
    after = rss_mb()
    rng = np.random.default_rng(1)
    data = rng.normal(size=(models, int(np.prod(first.extractor.vector_shape)))).astype(np.float32)
    timings = {"per_stream": _best(lambda: [s.score(data[i : i + 1]) for i, s in enumerate(scorers)]),
               "one_model": _best(lambda: scorers[0].score(data))}  # fmt: skip
    extra = {}
    if backend == "torch":
        grouped = _grouped(bundles, data)
        timings["grouped"] = _best(grouped)
        # The grouped call must compute what each stream's own model computes, or its speed means nothing.
        want = np.concatenate([s.reconstruct(data[i : i + 1]) for i, s in enumerate(scorers)])
        got = grouped()
        extra["grouped_max_rel_diff"] = float(np.abs(want - got).max() / max(float(np.abs(want).max()), 1e-12))
    print(json.dumps({"backend": backend, "models": models, "rss_before_mb": round(before, 1), **extra,
                      "rss_after_mb": round(after, 1), "rss_per_model_kb": round(1024 * (after - before) / models, 1),
                      "load_ms_per_model": round(1000 * load_s, 2),
                      "us_per_window": {k: round(1e6 * v / models, 2) for k, v in timings.items()}}))  # fmt: skip


def _grouped(bundles: list, data):  # type: ignore[no-untyped-def]
    """One vmapped call over the stacked weights and buffers of every bundle's network (eval mode)."""
    import copy

    import torch
    from torch.func import functional_call, stack_module_state

    networks = [b.network.eval() for b in bundles]
    params, buffers = stack_module_state(networks)
    skeleton = copy.deepcopy(networks[0]).to("meta")
    x = torch.from_numpy(data).unsqueeze(1)  # (models, 1, features): each model sees its own stream's window

    def one(p, b, xi):  # type: ignore[no-untyped-def]
        return functional_call(skeleton, (p, b), (xi,)).reconstruction

    run = torch.vmap(one)

    def call():  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            return run(params, buffers, x).squeeze(1).numpy()

    return call


def engine_child(bundle: str, models: int, windows: int, repeats: int = 7) -> None:
    """Engine.process on micro-batches of one record per stream, each stream on a learned model of its own, with
    grouping off and on, and all streams on the route's one model; prints one JSON line."""
    import numpy as np
    import torch
    from prometheus_client import CollectorRegistry

    from ae_monitor.config import AlertingConfig
    from ae_monitor.engine import Engine
    from ae_monitor.jobs.demo import START_S, machine
    from ae_monitor.metrics import Metrics
    from ae_monitor.model.bundle import load_bundle
    from ae_monitor.records import SensorRecord

    torch.set_num_threads(1)  # serve's default (scoring.torch_threads); more threads on busy cores spin and wait
    route = load_bundle(bundle)
    own = [load_bundle(bundle) for _ in range(models)]  # N distinct models, as N learned streams hold
    sensor, channels = route.features.sensor, tuple(route.extractor.group_names)
    fill, step = sensor.window_samples, windows * sensor.hop_samples  # first batch fills each stream's window
    total = fill + repeats * step
    rng = np.random.default_rng(2)
    values = {f"s{i}": machine(total, rng)[0] for i in range(models)}

    def batch(start: int, count: int) -> list[SensorRecord]:
        ts = START_S + sensor.sample_period_s * np.arange(start, start + count, dtype=np.float64)
        return [SensorRecord(name, ts, v[start : start + count], channels) for name, v in values.items()]

    batches = [batch(0, fill)] + [batch(fill + k * step, step) for k in range(repeats)]

    def engine(group_models: bool, learned: bool) -> EngineRun:
        engine = Engine({"route": route}, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()),
                        group_models=group_models)  # fmt: skip
        if learned:
            for name, model in zip(values, own, strict=True):
                engine.score_stream_with(name, model)
        return EngineRun(engine)

    runs = {"per_slot": engine(False, True), "grouped": engine(True, True), "one_model": engine(True, False)}
    for run in runs.values():
        run.first(batches[0])
    for records in batches[1:]:  # each micro-batch through every engine in turn: they share the machine's noise
        for run in runs.values():
            run.timed(records)
    alone, grouped = runs["per_slot"], runs["grouped"]
    want, got = np.array([w[2] for w in alone.scores]), np.array([w[2] for w in grouped.scores])
    same_windows = [w[:2] for w in alone.scores] == [w[:2] for w in grouped.scores]
    difference = float(np.abs(want - got).max() / max(float(np.abs(want).max()), 1e-12)) if same_windows else None
    print(json.dumps({"models": models, "windows_per_stream": windows, "windows_per_batch": len(want) // repeats,
                      "us_per_window": {k: round(1e6 * r.best_s / (models * windows), 2) for k, r in runs.items()},
                      "first_batch_ms": {"per_slot": round(alone.first_ms, 1), "grouped": round(grouped.first_ms, 1)},
                      "first_batch_rss_mb": {"per_slot": round(alone.rss_mb, 1), "grouped": round(grouped.rss_mb, 1)},
                      "grouped_max_rel_diff": difference}))  # fmt: skip


class EngineRun:
    """One engine's micro-batches: the first (fills each stream's window; grouped: stacks the weights), its time
    and the RSS it added, then the best time of the others and every window they scored."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.best_s, self.first_ms, self.rss_mb = engine, float("inf"), 0.0, 0.0
        self.scores: list[tuple[str, float, float]] = []

    def first(self, records: list[Any]) -> None:
        import gc

        gc.collect()
        before, started = rss_mb(), time.perf_counter()
        self.engine.process(records)
        self.first_ms, self.rss_mb = 1000 * (time.perf_counter() - started), rss_mb() - before

    def timed(self, records: list[Any]) -> None:
        started = time.perf_counter()
        result = self.engine.process(records)
        self.best_s = min(self.best_s, time.perf_counter() - started)
        self.scores = sorted(self.scores + [(w.stream, w.start_s, w.score) for w in result.windows])


def _best(call, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[1000], help="N, one run per value")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--bundle", type=Path, help="a sensor bundle with model.onnx (default: train a small one)")
    parser.add_argument("--engine", action="store_true", help="time Engine.process, grouped vs one call per slot")
    parser.add_argument("--windows", type=int, default=4, help="--engine: windows per stream and micro-batch")
    parser.add_argument("--child", nargs=3, metavar=("BACKEND", "BUNDLE", "MODELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child[0] == "engine":
            engine_child(args.child[1], int(args.child[2]), args.windows)
        else:
            child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or prepare_bundle(Path(tmp))
        for models in args.models:
            if args.engine:
                _report_engine(_run_child(["engine", str(bundle), str(models), "--windows", str(args.windows)]))
                continue
            for backend in args.backends:
                _report_models(backend, _run_child([backend, str(bundle), str(models)]))
    return 0


def _run_child(args: list[str]) -> dict:  # type: ignore[type-arg]
    """One measurement in a fresh interpreter (its RSS is its own); returns the JSON line it prints."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _report_models(backend: str, result: dict) -> None:  # type: ignore[type-arg]
    per = result["us_per_window"]
    floor = per["one_model"]
    print(f"{backend}: {result['models']} models, RSS {result['rss_before_mb']} -> {result['rss_after_mb']} MB "
          f"= {result['rss_per_model_kb']} KB per model (10,000: "
          f"{result['rss_per_model_kb'] * 10_000 / 1024:.0f} MB); load {result['load_ms_per_model']} ms "
          "per model")  # fmt: skip
    for way, us in per.items():
        print(f"  {way:10s} {us:8.2f} us per window  ({us / floor:6.1f} x one model)")
    if "grouped_max_rel_diff" in result:
        print(f"  grouped reconstructions vs each model's own: max relative difference "
              f"{result['grouped_max_rel_diff']:.1e}")  # fmt: skip


def _report_engine(result: dict) -> None:  # type: ignore[type-arg]
    per, first, rss = result["us_per_window"], result["first_batch_ms"], result["first_batch_rss_mb"]
    print(f"engine: {result['models']} streams, each on a learned model of its own, {result['windows_per_stream']} "
          f"windows per stream and micro-batch ({result['windows_per_batch']} windows)")  # fmt: skip
    print(f"  per_slot   {per['per_slot']:8.2f} us per window  (scoring.group_models = false: one call per stream)")
    print(f"  grouped    {per['grouped']:8.2f} us per window  ({per['per_slot'] / per['grouped']:.1f} x faster)")
    print(f"  one_model  {per['one_model']:8.2f} us per window  (every stream on the route's one model)")
    difference = result["grouped_max_rel_diff"]
    print("  grouped window scores vs per-slot: " + ("DIFFERENT WINDOWS" if difference is None
                                                    else f"max relative difference {difference:.1e}"))  # fmt: skip
    print(f"  first micro-batch (fills the windows; grouped also stacks the weights): per_slot {first['per_slot']} ms, "
          f"{rss['per_slot']} MB RSS; grouped {first['grouped']} ms, {rss['grouped']} MB RSS")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
