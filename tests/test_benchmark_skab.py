"""The SKAB benchmark: the protocol's counting, its outputs, and a two-file run on the real data."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ae_monitor.cli import main
from ae_monitor.config import load_config
from ae_monitor.jobs.benchmark import TRAIN_ROWS, counts, fit_file_bundle, rates, run_skab, skab_files
from ae_monitor.jobs.data import Signal, load_signals

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sensor-skab.toml"
HEADER = "datetime;a;b;c;anomaly;changepoint"


def _write_run(path: Path, rows: int, anomaly: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = np.stack([np.sin(t / 7), np.cos(t / 11), np.sin(t / 5)], axis=1) + 0.05 * rng.normal(size=(rows, 3))
    label = np.zeros(rows)
    label[anomaly[0] : anomaly[1]] = 1
    values[label == 1, 1] += 3.0
    lines = [HEADER] + [
        f"{1_600_000_000 + i};{v[0]:.5f};{v[1]:.5f};{v[2]:.5f};{label[i]};0.0" for i, v in enumerate(values)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def tiny_skab(tmp_path: Path) -> Path:
    root = tmp_path / "skab"
    _write_run(root / "valve1" / "0.csv", 700, (500, 600), 0)
    _write_run(root / "other" / "1.csv", 650, (450, 560), 1)
    _write_run(root / "anomaly-free" / "anomaly-free.csv", 500, (0, 0), 2)
    return root


def _fast_config(tmp_path: Path) -> Path:
    text = CONFIG.read_text(encoding="utf-8").replace("epochs = 30 ", "epochs = 3  ")
    text = re.sub(r"^channels = \[.*$", "channels = []", text, flags=re.MULTILINE)
    path = tmp_path / "fast.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_skab_rates_follow_the_published_definitions() -> None:
    c = counts(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert rates(c) == {"f1": 2 / 3, "far": 0.5, "mar": 1 / 3}


def test_the_anomaly_free_file_is_not_part_of_the_protocol(tiny_skab: Path) -> None:
    assert [p.relative_to(tiny_skab).as_posix() for p in skab_files(tiny_skab)] == ["valve1/0.csv", "other/1.csv"]


def test_benchmark_writes_one_prediction_per_test_row_and_the_leaderboard(tiny_skab: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "benchmark", "skab", "--data", str(tiny_skab), "--out", str(out),
                 "--config", str(_fast_config(tmp_path))]) == 0  # fmt: skip
    with (out / "predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == (700 - 400) + (650 - 400)
    assert rows[0]["file"] == "valve1/0.csv"
    assert rows[0]["row"] == "400"
    assert {r["alert"] for r in rows} <= {"0", "1"}
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results["files"]) == {"valve1/0.csv", "other/1.csv"}
    total = sum(results["counts"].values())
    assert total == len(rows)
    assert results["baselines"]["always_alarm"]["far"] == 1.0
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| **ae_monitor (this run)** |" in md
    assert "| Conv-AE | 0.780 | 13.55 | 28.02 |" in md
    assert (out / "leaderboard.png").stat().st_size > 0
    assert (out / "timelines" / "other" / "1.png").stat().st_size > 0


def test_benchmark_never_reads_test_labels_for_its_choices(tiny_skab: Path, tmp_path: Path) -> None:
    config = load_config(_fast_config(tmp_path))
    flipped = tmp_path / "flipped"
    shutil.copytree(tiny_skab, flipped)
    for path in skab_files(flipped):
        lines = path.read_text(encoding="utf-8").splitlines()
        lines[401:] = [line[: line.rindex(";", 0, line.rindex(";"))] + ";1.0;0.0" for line in lines[401:]]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    a = run_skab(config, tiny_skab, tmp_path / "a", plots=False)
    b = run_skab(config, flipped, tmp_path / "b", plots=False)
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert a["files"]["valve1/0.csv"]["threshold"] == b["files"]["valve1/0.csv"]["threshold"]


@pytest.mark.shared_data
def test_two_real_skab_files_are_mostly_right(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "skab"
    for rel in ("valve1/3.csv", "other/6.csv"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "skab" / rel, data / rel)
    results = run_skab(load_config(CONFIG), data, tmp_path / "out", plots=False)
    assert results["n_files"] == 2
    assert results["f1"] > 0.8
    assert results["far"] < 0.3


def test_each_files_bundle_forms_its_scores_as_train_does(tiny_skab: Path, tmp_path: Path) -> None:
    config = load_config(_fast_config(tmp_path))
    signal = load_signals([tiny_skab / "valve1" / "0.csv"], config.features)[0]
    train = Signal(signal.name, signal.samples[:TRAIN_ROWS], signal.ts_s[:TRAIN_ROWS], signal.channels)
    calibration = fit_file_bundle(config, train).calibration
    assert calibration is not None
    assert calibration.aggregation == config.calibration.aggregation == "max"
    assert calibration.recent_steps == config.calibration.recent_steps == 10
    assert calibration.group_scale is not None
