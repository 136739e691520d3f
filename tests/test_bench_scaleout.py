"""Smoke test of scripts/bench_scaleout.py: one serve process in a group measured against the session broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


def test_one_process_is_measured_and_is_its_own_reference(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script("bench_scaleout.py", name="_bench_scaleout")
    out = tmp_path / "figures.json"
    argv = ["--bootstrap", kafka_bootstrap, "--processes", "1", "--records", "400000", "--measure-s", "2",
            "--workdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    (figure,) = json.loads(out.read_text(encoding="utf-8"))
    assert figure["processes"] == 1
    assert figure["records_per_s"] > 0
    assert figure["ratio_to_one"] == 1.0
    assert "records/s" in capsys.readouterr().out


def test_more_processes_than_partitions_are_refused() -> None:
    bench = load_script("bench_scaleout.py", name="_bench_scaleout")
    with pytest.raises(SystemExit):
        bench.main(["--processes", "1", "8", "--partitions", "4"])
