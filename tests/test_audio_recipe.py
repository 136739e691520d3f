"""The shipped audio recipe end to end: band scaling fitted by `train`, kept in the bundle, scored the same live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ae_monitor.config import Config, LogMelConfig, load_config
from ae_monitor.features import concat_vectors
from ae_monitor.features.inverse import overlap_add_frames
from ae_monitor.features.logmel import LogMelExtractor
from ae_monitor.jobs import machine_sounds
from ae_monitor.jobs.data import Signal, score_signal
from ae_monitor.jobs.reconstruction import images
from ae_monitor.jobs.train import TrainReport, train_bundle
from ae_monitor.model.bundle import load_bundle
from ae_monitor.scoring import WindowAggregator, scorer_for, window_plan

REPO = Path(__file__).resolve().parents[1]
VALVE = machine_sounds.SUITE[8]


def shipped_config(epochs: int = 2) -> Config:
    config = load_config(REPO / "configs" / "audio-dcase.toml", environ={})
    return config.model_copy(update={"training": config.training.model_copy(update={"epochs": epochs})})


def signal(y: np.ndarray) -> Signal:
    return Signal("clip", y, np.arange(len(y)) / 16000.0, ())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainReport:
    folder = tmp_path_factory.mktemp("valve")
    sf.write(folder / "normal.wav", machine_sounds.normal(VALVE, 15.0), machine_sounds.SAMPLE_RATE_HZ)
    return train_bundle(shipped_config(), [folder / "normal.wav"], folder / "bundle", progress=False)


def test_the_shipped_audio_config_scales_each_band_by_its_training_statistics() -> None:
    assert shipped_config().features.logmel.band_scaling == "standard"


def test_train_stores_the_band_statistics_in_the_bundle_and_a_reloaded_bundle_scores_the_same(
    trained: TrainReport,
) -> None:
    loaded = load_bundle(trained.path)
    assert loaded.extractor.to_manifest() == trained.bundle.extractor.to_manifest()
    assert "band_mean" in loaded.extractor.to_manifest()
    y = machine_sounds.abnormal(VALVE, 3.0)
    before = score_signal(trained.bundle, scorer_for(trained.bundle), signal(y))
    after = score_signal(loaded, scorer_for(loaded), signal(y))
    np.testing.assert_array_equal(after.scores.errors, before.scores.errors)


def test_windows_scored_from_chunks_pushed_live_equal_the_offline_windows(trained: TrainReport) -> None:
    bundle = trained.bundle
    y = machine_sounds.abnormal(VALVE, 4.0)
    scorer = scorer_for(bundle)
    offline = score_signal(bundle, scorer, signal(y))
    # Live: 0.5 s audio chunks (as Kafka records carry them) into one feature stream, scored as they complete.
    stream, aggregator = bundle.extractor.stream(), WindowAggregator(*window_plan(bundle.features))
    live, parts = [], []
    for start in range(0, len(y), 8000):
        vectors = stream.push(y[start : start + 8000])
        parts.append(vectors)
        live += aggregator.push(scorer.score(vectors.data), vectors.first_sample, vectors.end_sample)
    parts.append(stream.flush())
    np.testing.assert_allclose(concat_vectors(parts, 640).data, offline.vectors.data, atol=1e-5)
    assert len(live) > 0
    assert [w.start for w in live] == [w.start for w in offline.windows[: len(live)]]
    np.testing.assert_allclose([w.score for w in live], [w.score for w in offline.windows[: len(live)]], rtol=1e-5)


def test_reconstruction_images_of_a_band_scaled_bundle_are_in_db(trained: TrainReport) -> None:
    y = machine_sounds.normal(VALVE, 2.0)
    scaled = trained.bundle.extractor.transform(y).data
    db = overlap_add_frames(LogMelExtractor(LogMelConfig()).transform(y).data, frames=5)
    np.testing.assert_allclose(images(trained.bundle, scaled)[0], db, atol=1e-3)
