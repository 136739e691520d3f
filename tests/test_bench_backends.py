"""scripts/bench_backends.py: torch and onnx scoring speed side by side, with their score difference."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_loader import load_script

pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed")
bench = load_script("bench_backends.py", name="bench_backends")


def test_the_benchmark_prints_a_ratio_and_a_tiny_score_difference_for_every_kind_and_batch(
    sensor_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--bundle", str(sensor_bundle), "--repeats", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.endswith("|") and "x |" in line]
    assert len(rows) == len(bench.KINDS) * len(bench.BATCHES) + 1  # and the engine's row
    scoring = [row for row in rows if row[1].strip() in bench.KINDS]
    assert all(float(row[-2]) < 1e-5 for row in scoring)  # the max relative score difference
    assert all(float(row[5].strip().rstrip("x")) > 0 for row in scoring)
