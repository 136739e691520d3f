"""Smoke test of scripts/bench_offline.py: a tiny run prints the comparison table and exits 0."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_offline.py", name="_bench_offline")


def test_tiny_run_prints_both_rows_and_exits_0(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    code = bench.main(["--clips", "2", "--repeats", "1", "--skab", str(tmp_path / "missing.csv"), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    rows = [line for line in printed.splitlines() if line.startswith(("plain per-clip recipe", "ae_monitor per clip"))]
    assert len(rows) == 2
    assert all("x" in row for row in rows)
    assert "clip scores agree" in printed
    assert "SKIPPED" in printed
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert set(figures["audio"]["paths"]) >= {"plain per-clip recipe", "ae_monitor per clip"}
    assert figures["skab"] is None


def test_paths_that_disagree_exit_1(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = bench.baseline_score
    monkeypatch.setattr(bench, "baseline_score", lambda model, clip: 1.01 * real(model, clip))
    assert bench.main(["--clips", "2", "--repeats", "1", "--skab", str(tmp_path / "missing.csv")]) == 1
    assert "MISMATCH" in capsys.readouterr().out
