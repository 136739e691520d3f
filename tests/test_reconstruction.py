"""Reconstruction quality (MSE, PSNR, SSIM) in evaluate, and the side-by-side plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ae_monitor.config import config_from_dict
from ae_monitor.jobs.data import load_signals, score_signal
from ae_monitor.jobs.evaluate import evaluate
from ae_monitor.jobs.reconstruction import psnr, quality, reconstruction_plots, ssim
from ae_monitor.jobs.train import train_bundle
from ae_monitor.model.bundle import load_bundle
from ae_monitor.scoring import scorer_for


@pytest.fixture(scope="module")
def known() -> tuple[np.ndarray, np.ndarray]:
    reference = np.add.outer(np.linspace(0, 1, 32), np.linspace(0, 2, 24))
    return reference, reference + np.random.default_rng(0).normal(0, 0.1, reference.shape)


def test_psnr_is_the_library_value_and_the_textbook_formula(known: tuple[np.ndarray, np.ndarray]) -> None:
    reference, test = known
    mse = np.mean(np.square(reference - test))
    assert psnr(reference, test, data_range=3.0) == pytest.approx(10 * math.log10(9.0 / mse))
    assert psnr(reference, test, data_range=3.0) == peak_signal_noise_ratio(reference, test, data_range=3.0)


def test_ssim_is_the_library_value_with_the_largest_window_that_fits(known: tuple[np.ndarray, np.ndarray]) -> None:
    reference, test = known
    assert ssim(reference, test, data_range=3.0) == structural_similarity(reference, test, data_range=3.0)
    narrow = (reference[:, :4], test[:, :4])  # a sensor window of 4 channels: window 3
    assert ssim(*narrow, data_range=3.0) == structural_similarity(*narrow, data_range=3.0, win_size=3)
    assert ssim(reference[:, :2], test[:, :2], data_range=3.0) is None
    assert ssim(reference, reference, data_range=3.0) == pytest.approx(1.0)


def test_quality_of_identical_images_is_perfect(known: tuple[np.ndarray, np.ndarray]) -> None:
    result = quality([known[0]], [known[0]], data_range=3.0)
    assert result["mse"] == 0.0
    assert result["psnr_db"] == math.inf
    assert result["ssim"] == pytest.approx(1.0)


def test_evaluate_reports_reconstruction_per_file_and_overall_and_draws_windows(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path
) -> None:
    report = evaluate(load_bundle(sensor_bundle), [sensor_data[1]], tmp_path, rows=slice(200, 700))
    written = json.loads((tmp_path / "report.json").read_text())
    overall = written["reconstruction"]["overall"]
    assert written["reconstruction"]["data_range"] > 0
    assert "max - min" in written["reconstruction"]["data_range_rule"]
    assert overall["mse"] > 0
    assert overall["psnr_db"] > 0
    assert 0 < overall["ssim"] <= 1
    assert set(written["files"]["pump-2"]["reconstruction"]) == {"mse", "psnr_db", "ssim", "images"}
    anomalous = written["files"]["pump-2"]["reconstruction"]["mse"]
    assert anomalous > written["files"]["pump-1"]["reconstruction"]["mse"]  # the bearing fault rebuilds worse
    figures = sorted(Path(p).name for p in report["plots"].values() if "reconstruction" in p)
    assert sum(name.startswith("normal_") for name in figures) == 3
    assert sum(name.startswith("anomalous_") for name in figures) == 3


def test_audio_plots_show_normal_and_anomalous_clips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2 * 16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "normal_0.wav", (tone + 0.05 * rng.normal(size=t.size)).astype(np.float32), 16000)
    sf.write(tmp_path / "anomaly_0.wav", (tone + 0.3 * rng.normal(size=t.size)).astype(np.float32), 16000)
    config = config_from_dict({
        "features": {"logmel": {"score_window_s": 0.25, "score_hop_s": 0.25}},
        "model": {"hidden_units": [16], "latent_dim": 2},
        "training": {"epochs": 2, "calibration_fraction": 0.3},
    })  # fmt: skip
    report = train_bundle(config, [tmp_path / "normal_0.wav"], tmp_path / "b", progress=False)
    bundle = report.bundle
    scored = [score_signal(bundle, scorer_for(bundle), s) for s in load_signals([tmp_path], bundle.features)]
    paths = reconstruction_plots(tmp_path / "plots", bundle, scored)
    assert sorted(p.name for p in paths) == ["anomalous_anomaly_0_0.png", "normal_normal_0_0.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
