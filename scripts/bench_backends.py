#!/usr/bin/env python3
"""Scoring speed of the two backends, torch and onnx (ONNX Runtime), side by side in one run.

For each network kind (the DCASE dense audio network on (5, 128) log-mel vectors, and dense, conv1d, lstm and vae
sensor networks on the demo's (30, 4) windows) and each batch size, vectors per second through `scorer_for(bundle)
.score`, one thread each (serve's default `scoring.torch_threads`), the two backends interleaved repeat by repeat so
that a busy machine slows both alike; the median of the repeats. Then the whole engine on sensor records (features,
scoring, windows, alert decisions) with each backend, which is what serve's rate depends on. Prints a table with
the onnx/torch ratios and the largest score difference between the two.

    .venv/bin/python scripts/bench_backends.py [--bundle SENSOR_BUNDLE] [--repeats 7]

Without --bundle it trains the demo's small sensor bundle. docs/footprint.md has its output.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig, FeaturesConfig, ModelConfig, TrainingConfig
from ae_monitor.engine import Engine
from ae_monitor.features import build_extractor
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, export_onnx, load_bundle, save_bundle, weights_version
from ae_monitor.model.networks import build_model
from ae_monitor.records import SensorRecord
from ae_monitor.scoring import scorer_for

KINDS = {
    "dense, audio (5x128), DCASE": None,  # the default ModelConfig on the default log-mel features
    "dense, sensor (30x4)": ModelConfig(kind="dense"),
    "conv1d, sensor": ModelConfig(kind="conv1d"),
    "lstm, sensor": ModelConfig(kind="lstm"),
    "vae, sensor": ModelConfig(kind="vae"),
}
BATCHES = (1, 64, 1024)


def train_demo_bundle(workdir: Path) -> Path:
    from ae_monitor.jobs.demo import demo_config, make_data
    from ae_monitor.jobs.train import train_bundle

    train, _ = make_data(workdir / "pumps", train_s=3000, replay_s=1000)
    return train_bundle(demo_config(), [train], workdir / "pump", name="pump", progress=False).path


def variant(base: Path, model_config: ModelConfig | None, out: Path) -> Path:
    """A bundle of `model_config` (initialised weights: speed does not depend on training) with model.onnx."""
    bundle = load_bundle(base)
    if model_config is None:
        features = FeaturesConfig()
        extractor = build_extractor(features)
        model = build_model(ModelConfig(), extractor.vector_shape).eval()
        bundle = Bundle(name="audio", version=weights_version(model), features=features, model_config=ModelConfig(),
                        training=TrainingConfig(), extractor=extractor, model=model, calibration=None,
                        extra={})  # fmt: skip
    else:
        model = build_model(model_config, bundle.extractor.vector_shape).eval()
        bundle = replace(bundle, model_config=model_config, model=model, version=weights_version(model))
    path = save_bundle(bundle, out)
    export_onnx(path)
    return path


def rate(run: Callable[[], object], items: int, min_s: float = 0.2) -> float:
    """Items per second of `run`, repeated for at least `min_s`."""
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_s or done == 0:
        run()
        done += items
    return done / elapsed


def scorer_rates(path: Path, repeats: int) -> list[tuple[int, float, float, float]]:
    """Per batch size: torch and onnx vectors/s, and the largest relative score difference."""
    torch_scorer, onnx_scorer = scorer_for(load_bundle(path)), scorer_for(load_bundle(path, backend="onnx"))
    steps, groups = load_bundle(path).extractor.vector_shape
    rows = []
    for batch in BATCHES:
        data = np.random.default_rng(0).normal(size=(batch, steps * groups)).astype(np.float32)
        want, got = torch_scorer.score(data).errors, onnx_scorer.score(data).errors
        diff = float(np.abs(want - got).max() / max(float(np.abs(want).max()), 1e-12))
        pairs = [(rate(lambda d=data: torch_scorer.score(d), batch), rate(lambda d=data: onnx_scorer.score(d), batch))
                 for _ in range(repeats)]  # fmt: skip
        rows.append((batch, statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs), diff))
    return rows


def engine_rate(path: Path, backend: str, streams: int = 100, rows: int = 400) -> float:
    """Sensor records (one sample each) per second through the engine with `backend`: features to alerts."""
    bundle = load_bundle(path, backend=backend)  # type: ignore[arg-type]
    engine = Engine(bundle, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()))
    channels = bundle.extractor.group_names
    values = np.random.default_rng(0).normal(0.5, 0.1, size=(rows, len(channels)))
    records = [SensorRecord(f"s{s}", np.array([1.7e9 + r]), values[r : r + 1], channels)
               for r in range(rows) for s in range(streams)]  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(records), 2000):
        engine.process(records[i : i + 2000])
    return len(records) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="sensor bundle (default: train the demo's)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, one thread each, "
          f"median of {args.repeats} interleaved repeats")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        work = Path(tmp)
        base = args.bundle or train_demo_bundle(work)
        print("\n| network | batch | torch vectors/s | onnx vectors/s | onnx / torch | max rel. score diff |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, model_config in KINDS.items():
            path = variant(base, model_config, work / name.split(",")[0].replace(" ", "-") / "b")
            for batch, torch_rate, onnx_rate, diff in scorer_rates(path, args.repeats):
                print(f"| {name} | {batch} | {torch_rate:,.0f} | {onnx_rate:,.0f} | {onnx_rate / torch_rate:.2f}x "
                      f"| {diff:.1e} |")  # fmt: skip
            shutil.rmtree(path.parent)
        exported = work / "exported"
        shutil.copytree(base, exported)
        export_onnx(exported)
        pairs = [(engine_rate(exported, "torch"), engine_rate(exported, "onnx")) for _ in range(min(3, args.repeats))]
        torch_rate, onnx_rate = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        print("\n| engine, demo sensor bundle, 100 streams, 1-sample records | torch records/s | onnx records/s "
              "| onnx / torch |\n|---|---:|---:|---:|")  # fmt: skip
        print(f"| features + scoring + windows + alert decisions | {torch_rate:,.0f} | {onnx_rate:,.0f} "
              f"| {onnx_rate / torch_rate:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
