"""`ae-monitor evaluate` on a DCASE-layout folder prints and writes the per-machine-type AUC/pAUC table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ae_monitor.cli import main

RATE = 16000
CONFIG = """
[features]
kind = "logmel"
[features.logmel]
n_mels = 32
[model]
hidden_units = [32]
latent_dim = 4
[training]
epochs = 3
batch_size = 64
[calibration]
method = "quantile"
[metrics]
enabled = false
"""


def _clip(path: Path, seed: int, anomalous: bool) -> None:
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.normal(size=3 * RATE)
    if anomalous:
        x += 0.3 * np.sin(2 * np.pi * 3000 * np.arange(3 * RATE) / RATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), RATE)


@pytest.fixture
def dcase_root(tmp_path: Path) -> Path:
    root = tmp_path / "dev"
    for m, machine in enumerate(("fan", "pump")):
        for i in range(6):  # 12 clips: split by whole files
            _clip(root / machine / "train" / f"normal_id_00_{i:08d}.wav", 100 * m + i, False)
        for machine_id in ("00", "02"):
            for i in range(2):
                _clip(root / machine / "test" / f"normal_id_{machine_id}_{i:08d}.wav", 1000 + 10 * m + i, False)
                _clip(root / machine / "test" / f"anomaly_id_{machine_id}_{i:08d}.wav", 2000 + 10 * m + i, True)
    return root


def test_evaluate_prints_the_dcase_table_per_machine_type_and_id(
    dcase_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "audio.toml"
    config.write_text(CONFIG, encoding="utf-8")
    bundle, report = tmp_path / "bundle", tmp_path / "report"
    data = [str(dcase_root / m / "train") for m in ("fan", "pump")]
    assert main(["-q", "train", "--config", str(config), "--data", *data, "--out", str(bundle)]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate", "--bundle", str(bundle), "--data", str(dcase_root), "--report", str(report),
                 "--no-plots"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "fan" in printed
    assert "pump" in printed
    assert "Average" in printed
    with (report / "dcase_result.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[:2] == [["fan"], ["id", "AUC", "pAUC"]]
    assert [r[0] for r in rows[2:5]] == ["id_00", "id_02", "Average"]
    assert rows[5] == []
    assert rows[6] == ["pump"]
    assert float(rows[4][1]) == 1.0  # a loud tone is trivially anomalous
