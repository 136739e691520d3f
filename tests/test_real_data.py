"""Smoke tests on real recordings from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ae_monitor.config import config_from_dict, load_config
from ae_monitor.jobs.data import load_signals, score_signal
from ae_monitor.jobs.train import train_bundle
from ae_monitor.scoring import scorer_for

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SR = 16000


def test_dcase_pump_anomaly_scores_above_the_held_out_normal_audio(shared_data: Path, tmp_path: Path) -> None:
    pump = shared_data / "audio" / "dcase2020-pump"
    config = load_config(CONFIGS / "audio-dcase.toml", environ={})
    # 6 s of audio: hold out more than the default 10 % so calibration sees a few dozen 1 s windows.
    training = config.training.model_copy(update={"epochs": 60, "calibration_fraction": 0.3})
    config = config.model_copy(update={"training": training})
    report = train_bundle(config, [pump / "normal_id_06_00000933.wav"], tmp_path / "b", rows=slice(0, 6 * SR),
                          progress=False)  # fmt: skip
    bundle, scorer = report.bundle, scorer_for(report.bundle)
    normal_tail = load_signals([pump / "normal_id_06_00000933.wav"], bundle.features, rows=slice(6 * SR, None))[0]
    anomaly = load_signals([pump / "anomaly_id_06_00000100.wav"], bundle.features)[0]
    normal_score = score_signal(bundle, scorer, normal_tail).clip_score
    anomaly_score = score_signal(bundle, scorer, anomaly).clip_score
    assert anomaly_score > normal_score


def test_skab_valve_anomalies_score_higher_than_its_normal_rows(shared_data: Path, tmp_path: Path) -> None:
    skab = shared_data / "skab"
    config = load_config(CONFIGS / "sensor-skab.toml", environ={})
    report = train_bundle(config, [skab / "anomaly-free"], tmp_path / "b", progress=False)
    bundle = report.bundle
    scored = score_signal(bundle, scorer_for(bundle), load_signals([skab / "valve1" / "0.csv"], bundle.features)[0])
    labels = scored.signal.row_labels
    assert labels is not None
    ends = np.asarray([int(w.end) - 1 for w in scored.windows])
    scores = np.asarray([w.score for w in scored.windows])
    assert scores[labels[ends] == 1].mean() > scores[labels[ends] == 0].mean()


def test_mimii_eight_channel_clips_load_averaged_or_per_channel(shared_data: Path) -> None:
    clip = shared_data / "audio" / "mimii" / "fan_normal.wav"
    averaged = load_signals([clip], config_from_dict({}).features)[0]
    third = load_signals([clip], config_from_dict({"features": {"logmel": {"channel": 3}}}).features)[0]
    assert averaged.samples.shape == third.samples.shape == (10 * SR,)
    assert not np.allclose(averaged.samples, third.samples)
