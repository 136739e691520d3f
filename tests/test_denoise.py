"""Denoising: a bundle trained to rebuild clean windows from noisy ones cleans signals, measurably."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ae_monitor.cli import main
from ae_monitor.config import LogMelConfig, config_from_dict
from ae_monitor.errors import BundleError
from ae_monitor.features.inverse import logmel_to_audio, overlap_add_frames, overlap_add_windows
from ae_monitor.features.logmel import LogMelExtractor
from ae_monitor.features.sensor import SensorExtractor
from ae_monitor.jobs.data import load_signals
from ae_monitor.jobs.demo import DEMO_CONFIG, write_csv
from ae_monitor.jobs.denoise import denoise_files, measure_gain
from ae_monitor.jobs.reconstruction import add_noise
from ae_monitor.jobs.train import train_bundle
from ae_monitor.model.bundle import load_bundle
from ae_monitor.sources.files import read_sensor_csv

SNR_DB = 10.0


@pytest.fixture(scope="module")
def denoising_bundle(sensor_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    training = {**DEMO_CONFIG["training"], "denoising": "gaussian", "noise_level": 0.3}
    out = tmp_path_factory.mktemp("denoise") / "pump-dae"
    train_bundle(config_from_dict({**DEMO_CONFIG, "training": training}), [sensor_data[0]], out, progress=False)
    return out


def test_the_denoising_bundle_gains_psnr_and_ssim_on_noisy_normal_data(
    denoising_bundle: Path, sensor_data: tuple[Path, Path]
) -> None:
    gain = measure_gain(load_bundle(denoising_bundle), sensor_data[1] / "pump-1.csv", snr_db=SNR_DB)
    assert gain.psnr_gain_db > 3.0
    assert gain.ssim_gain is not None
    assert gain.ssim_gain > 0.05


def test_a_cleaned_csv_is_closer_to_the_clean_signal_than_the_noisy_input(
    denoising_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = load_bundle(denoising_bundle)
    [clean] = load_signals([sensor_data[1] / "pump-1.csv"], bundle.features)
    noisy = add_noise(clean, snr_db=SNR_DB, rng=np.random.default_rng(1))
    write_csv(tmp_path / "noisy.csv", noisy.samples, None)
    [out] = denoise_files(bundle, tmp_path / "noisy.csv", tmp_path / "clean.csv")
    cleaned = read_sensor_csv(out, bundle.features.sensor)
    assert cleaned.values.shape == clean.samples.shape
    std = clean.samples.std(axis=0)
    noisy_error = np.mean(np.square((noisy.samples - clean.samples) / std))
    cleaned_error = np.mean(np.square((cleaned.values - clean.samples) / std))
    assert cleaned_error < 0.5 * noisy_error


def test_bundles_not_trained_to_denoise_are_refused(sensor_bundle: Path, sensor_data: tuple[Path, Path]) -> None:
    with pytest.raises(BundleError, match=r"training\.denoising"):
        denoise_files(load_bundle(sensor_bundle), sensor_data[1] / "pump-1.csv", "unused.csv")


def test_sensor_windows_overlap_add_back_to_the_raw_samples() -> None:
    raw = np.random.default_rng(0).normal(5.0, 2.0, size=(50, 3))
    extractor = SensorExtractor.fit(config_from_dict(DEMO_CONFIG).features.sensor, ("a", "b", "c"), [raw])
    vectors = extractor.transform(raw)
    np.testing.assert_allclose(overlap_add_windows(vectors.data, vectors.first_sample, 50, extractor), raw, atol=1e-5)


def test_logmel_vectors_overlap_add_back_to_the_frames_and_invert_to_audio_of_the_same_length() -> None:
    cfg = LogMelConfig()
    audio = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    extractor = LogMelExtractor(cfg)
    vectors = extractor.transform(audio)
    image = overlap_add_frames(vectors.data, frames=cfg.frames)
    np.testing.assert_allclose(image[: cfg.frames], vectors.data[0].reshape(cfg.frames, -1), atol=1e-4)
    rebuilt = logmel_to_audio(image, cfg, length=len(audio), n_iter=8)
    assert rebuilt.shape == audio.shape
    assert np.isfinite(rebuilt).all()
    spectrum = np.abs(np.fft.rfft(rebuilt))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 40  # the tone survives the approximate inverse


def test_denoise_command_writes_a_wav_for_an_audio_bundle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    sf.write(tmp_path / "normal_0.wav", clip, 16000)
    config = config_from_dict({
        "features": {"logmel": {"score_window_s": 0.5, "score_hop_s": 0.25}},
        "model": {"hidden_units": [32], "latent_dim": 4},
        "training": {"epochs": 3, "batch_size": 32, "calibration_fraction": 0.3, "denoising": "gaussian"},
    })  # fmt: skip
    train_bundle(config, [tmp_path / "normal_0.wav"], tmp_path / "b", progress=False)
    args = ["-q", "denoise", "--bundle", str(tmp_path / "b"), "--input", str(tmp_path / "normal_0.wav")]
    assert main([*args, "--out", str(tmp_path / "clean.wav")]) == 0
    cleaned, rate = sf.read(tmp_path / "clean.wav")
    assert rate == 16000
    assert cleaned.shape == clip.shape
    assert main([*args, "--out", str(tmp_path / "cleaned")]) == 0  # a folder, as for several inputs
    assert sf.read(tmp_path / "cleaned" / "normal_0.wav")[0].shape == clip.shape
    assert main([*args, "--gain-snr-db", "0"]) == 0
