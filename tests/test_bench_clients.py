"""Smoke test of scripts/bench_clients.py: a --quick run against the session broker measures both clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def test_quick_run_measures_the_ceiling_and_serve_with_each_client(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script("bench_clients.py", name="_bench_clients")
    out = tmp_path / "clients.json"
    assert bench.main(["--quick", "--bootstrap", kafka_bootstrap, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in bench.ROWS:
        assert any(line.startswith(name) for line in printed.splitlines()), f"row {name!r} missing:\n{printed}"
    figures = {row["name"]: row["value"] for row in json.loads(out.read_text(encoding="utf-8"))["rows"]}
    assert all(figures[name] > 0 for name in bench.ROWS)
