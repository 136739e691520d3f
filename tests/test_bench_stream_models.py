"""scripts/bench_stream_models.py: memory, loading and scoring of many per-stream models, grouped scoring checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_loader import load_script

bench = load_script("bench_stream_models.py", name="bench_stream_models")


def test_it_prints_memory_per_model_and_each_way_of_scoring_against_one_model(
    sensor_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--bundle", str(sensor_bundle), "--backends", "torch", "--models", "6"]) == 0
    out = capsys.readouterr().out
    assert "KB per model" in out
    for way in ("per_stream", "one_model", "grouped"):
        assert f"  {way}" in out
    assert "1.0 x one model" in out
    difference = float(out.split("max relative difference ")[1].split()[0])
    assert difference < 1e-4  # stacked weights reconstruct exactly what each stream's own model does


def test_its_engine_mode_times_learned_streams_grouped_and_alone_and_checks_they_score_the_same(
    sensor_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--bundle", str(sensor_bundle), "--engine", "--models", "3", "--windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "engine: 3 streams" in out
    assert "(6 windows)" in out
    for way in ("per_slot", "grouped", "one_model"):
        assert f"  {way}" in out
    difference = float(out.split("max relative difference ")[1].split()[0])
    assert difference < 1e-5  # the grouped engine scores every window as one call per stream does
