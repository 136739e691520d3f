"""Write benchmarks/gutentag.yaml: the GutenTAG series of the detection benchmark (run once; the YAML is committed).

Every base oscillation GutenTAG offers for sensors (sine, ECG, random walk, cylinder-bell-funnel, polynomial,
random mode jumps), with daily-like cycles, trends and three noise levels, and every anomaly kind each base supports.
Positions, lengths and parameters are drawn from a fixed seed so the file is reproducible; the generated series
themselves are fixed by the `seed` key at the top of the YAML.

    python scripts/make_gutentag_suite.py > benchmarks/gutentag.yaml
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import yaml

KINDS = {
    "sine": ["amplitude", "extremum", "frequency", "mean", "pattern", "pattern-shift", "platform", "trend", "variance"],
    "ecg": ["amplitude", "extremum", "frequency", "mean", "pattern", "pattern-shift", "platform", "trend", "variance"],
    "random-walk": ["amplitude", "extremum", "mean", "platform", "trend", "variance"],
    "cylinder-bell-funnel": ["amplitude", "extremum", "mean", "pattern", "platform", "trend", "variance"],
    "polynomial": ["extremum", "mean", "platform", "trend", "variance"],
    "random-mode-jump": ["mode-correlation"],
}
NOISE = (0.01, 0.05, 0.1)
DAILY = {"kind": "sine", "frequency": 0.25, "amplitude": 1.0, "variance": 0.0}  # a 400-row cycle under the base
LINEAR = {"kind": "polynomial", "polynomial": [0.0, 1.0]}  # a slow drift across the series


def base(kind: str, noise: float, trend: dict[str, Any] | None) -> dict[str, Any]:
    bo: dict[str, Any] = {"kind": kind, "variance": noise}
    if kind in ("sine", "ecg"):
        bo |= {"frequency": 2.0 if kind == "sine" else 1.5, "amplitude": 1.0}
    elif kind == "random-walk":
        bo |= {"amplitude": 1.0, "smoothing": 0.05}
    elif kind == "cylinder-bell-funnel":
        bo |= {"amplitude": 1.0, "avg-pattern-length": 60, "variance-pattern-length": 0.2, "variance-amplitude": 0.1}
    elif kind == "polynomial":
        bo |= {"polynomial": [0.0, 0.5]}
    elif kind == "random-mode-jump":
        bo = {"kind": kind, "frequency": 3, "channel-diff": 1.0, "channel-offset": 2.0, "random-seed": 11}
    if trend is not None and kind != "random-mode-jump":
        bo["trend"] = dict(trend)
    return bo


def anomaly(kind: str, rng: np.random.Generator, position: int, channel: int) -> dict[str, Any]:
    length = 1 if kind == "extremum" else int(rng.choice([20, 40, 60, 100]))
    params: dict[str, Any] = {
        "amplitude": {"amplitude_factor": float(rng.choice([0.3, 2.0, 3.0]))},
        "extremum": {"min": bool(rng.integers(2)), "local": bool(rng.integers(2)), "context_window": 50},
        "frequency": {"frequency_factor": float(rng.choice([0.5, 2.0, 3.0]))},
        "mean": {"offset": float(rng.choice([-1.0, 0.5, 1.0]))},
        "pattern": {"sinusoid_k": 10.0, "cbf_pattern_factor": 2.0},
        "pattern-shift": {"shift_by": int(rng.choice([5, 10, 20])), "transition_window": 10},
        "platform": {"value": float(rng.choice([-0.5, 0.0, 0.5]))},
        "trend": {"oscillation": {"kind": "polynomial", "polynomial": [0.0, float(rng.choice([-2.0, 2.0]))]}},
        "variance": {"variance": float(rng.choice([0.3, 0.5]))},
        "mode-correlation": {},
    }[kind]
    return {"exact-position": position, "length": length, "channel": channel, "kinds": [{"kind": kind, **params}]}


def series(
    name: str, length: int, channels: int, bo: dict[str, Any], anomalies: list[dict[str, Any]]
) -> dict[str, Any]:
    return {"name": name, "length": length, "channels": channels, "semi-supervised": True,
            "base-oscillation": bo, "anomalies": anomalies}  # fmt: skip


def univariate(rng: np.random.Generator) -> list[dict[str, Any]]:
    """One series per (base, anomaly kind), two for sine; the cycle/trend variant and the noise level rotate."""
    out, i = [], 0
    variants = [("plain", None), ("daily", DAILY), ("trend", LINEAR)]
    for bo_kind, kinds in KINDS.items():
        for kind in kinds:
            for _ in range(2 if bo_kind == "sine" else 1):
                variant, trend = variants[0] if bo_kind == "random-mode-jump" else variants[i % len(variants)]
                noise = NOISE[(i // len(variants)) % len(NOISE)]
                i += 1
                position = int(rng.integers(300, 800))
                out.append(series(f"uni-{i:02d}-{bo_kind}-{variant}-{kind}", 1000, 1, base(bo_kind, noise, trend),
                                  [anomaly(kind, rng, position, 0)]))  # fmt: skip
    return out


def multivariate(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    out = []
    bases = list(KINDS)
    widths = (5, 8, 12, 20, 30, 40)
    for i in range(n):
        bo_kind = bases[i % len(bases)]
        channels = widths[i % len(widths)]
        trend = (None, DAILY, LINEAR)[i % 3] if bo_kind not in ("random-mode-jump", "ecg") else None
        n_anomalies = 1 + i % 3
        anomalies = []
        for j in range(n_anomalies):
            kind = KINDS[bo_kind][int(rng.integers(len(KINDS[bo_kind])))]
            position = 300 + j * 300 + int(rng.integers(0, 150))
            # Several channels at once for some, one channel for others: both kinds of multivariate fault.
            for channel in rng.choice(channels, size=1 + (i + j) % 2, replace=False):
                anomalies.append(anomaly(kind, rng, position, int(channel)))
        out.append(series(f"multi-{i:02d}-{bo_kind}-{channels}ch", 1200, channels,
                          base(bo_kind, NOISE[i % len(NOISE)], trend), anomalies))  # fmt: skip
    return out


def main() -> None:
    rng = np.random.default_rng(2026)
    doc = {"seed": 2026, "timeseries": univariate(rng) + multivariate(rng, 24)}
    sys.stdout.write("# Generated by scripts/make_gutentag_suite.py; the GutenTAG series of `make bench-detection`.\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
