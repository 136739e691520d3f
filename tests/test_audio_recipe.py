"""The shipped audio recipe end to end: band scaling fitted by `train`, kept in the bundle, scored the same live."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from prometheus_client import CollectorRegistry

from ae_monitor.band_statistic import BandMeanZ, band_means_of, running_means
from ae_monitor.config import AlertingConfig, Config, LogMelConfig, load_config
from ae_monitor.engine import Engine
from ae_monitor.errors import BundleError
from ae_monitor.features import concat_vectors
from ae_monitor.features.inverse import overlap_add_frames
from ae_monitor.features.logmel import LogMelExtractor, LogMelStream
from ae_monitor.jobs import machine_sounds
from ae_monitor.jobs.data import ScoredSignal, Signal, load_signals, score_signal
from ae_monitor.jobs.reconstruction import images
from ae_monitor.jobs.train import TrainReport, train_bundle
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.records import AudioRecord, Vectors, WindowScore
from ae_monitor.scoring import ScoredWindow, VectorScores, WindowAggregator, aggregate, scorer_for, window_plan
from ae_monitor.serve.offline import Runner
from ae_monitor.serve.outputs import Outputs
from ae_monitor.sinks.memory import MemorySink
from ae_monitor.sources.replay import ReplaySource

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


def test_the_shipped_audio_config_joins_the_band_statistic_to_the_window_score() -> None:
    calibration = shipped_config().calibration
    assert (calibration.window_statistic, calibration.window_statistic_margin) == ("band_mean_z", 2.0)


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


@pytest.fixture(scope="module")
def with_statistic(tmp_path_factory: pytest.TempPathFactory) -> TrainReport:
    """A bundle whose windows join the mean error with the band statistic (whatever the shipped default is)."""
    folder = tmp_path_factory.mktemp("valve-statistic")
    sf.write(folder / "normal.wav", machine_sounds.normal(VALVE, 15.0), machine_sounds.SAMPLE_RATE_HZ)
    config = shipped_config()
    config = config.model_copy(
        update={"calibration": config.calibration.model_copy(update={"window_statistic": "band_mean_z"})}
    )
    return train_bundle(config, [folder / "normal.wav"], folder / "bundle", progress=False)


def test_train_fits_the_window_statistic_and_a_reloaded_bundle_forms_the_same_window_scores(
    with_statistic: TrainReport,
) -> None:
    loaded = load_bundle(with_statistic.path)
    assert loaded.calibration is not None
    assert loaded.calibration.window_statistic is not None
    assert len(BandMeanZ.from_dict(loaded.calibration.window_statistic).band_mean) == 128
    y = machine_sounds.abnormal(VALVE, 3.0)
    before = score_signal(with_statistic.bundle, scorer_for(with_statistic.bundle), signal(y))
    after = score_signal(loaded, scorer_for(loaded), signal(y))
    assert [w.score for w in after.windows] == [w.score for w in before.windows]
    assert after.clip_score == before.clip_score


def test_train_fits_the_band_levels_on_all_the_normal_audio_not_on_the_held_out_tail_alone(
    with_statistic: TrainReport,
) -> None:
    # The held-out tail (10 %) of a short recording holds a handful of windows; band levels fitted there put new
    # normal windows far outside them. The threshold still comes from the held-out windows.
    bundle = with_statistic.bundle
    assert bundle.calibration is not None
    assert bundle.calibration.window_statistic is not None
    statistic = BandMeanZ.from_dict(bundle.calibration.window_statistic)
    (normal,) = load_signals([with_statistic.path.parent / "normal.wav"], bundle.features)
    means = band_means_of(bundle.extractor.transform(normal.samples).data, bundle.extractor.vector_shape)
    size, _hop = window_plan(bundle.features)
    np.testing.assert_allclose(statistic.band_mean, running_means(means, size).mean(axis=0), rtol=1e-9)
    assert bundle.calibration.n_samples < len(means) / 5


def test_a_bundle_whose_window_statistic_has_the_wrong_number_of_bands_is_refused(
    with_statistic: TrainReport,
) -> None:
    bundle = with_statistic.bundle
    assert bundle.calibration is not None
    wrong = BandMeanZ(band_mean=(0.0,) * 64, band_std=(1.0,) * 64, error_scale=1.0, statistic_scale=1.0).to_dict()
    broken = replace(bundle, calibration=replace(bundle.calibration, window_statistic=wrong))
    with pytest.raises(BundleError, match="64 band means, but a vector has 128"):
        scorer_for(broken)


def test_a_window_with_the_statistic_scores_the_larger_of_its_scaled_error_and_scaled_band_statistic(
    with_statistic: TrainReport,
) -> None:
    bundle = with_statistic.bundle
    assert bundle.calibration is not None
    assert bundle.calibration.window_statistic is not None
    statistic = BandMeanZ.from_dict(bundle.calibration.window_statistic)
    scored = score_signal(bundle, scorer_for(bundle), signal(machine_sounds.abnormal(VALVE, 3.0)))
    size, hop = window_plan(bundle.features)
    means = band_means_of(scored.vectors.data, bundle.extractor.vector_shape)
    for k, window in enumerate(scored.windows):
        rows = slice(k * hop, k * hop + size)
        error = scored.scores.errors[rows].mean() / statistic.error_scale
        band = statistic.statistic(means[rows].mean(axis=0)) / statistic.statistic_scale
        assert window.score == pytest.approx(max(error, band), rel=1e-9)
    # The threshold is in the same units: calibration scored its windows the same way.
    assert bundle.calibration_scores is not None
    assert np.quantile(bundle.calibration_scores, 0.99) == pytest.approx(1.0, rel=0.5)


def test_windows_with_the_statistic_scored_from_live_chunks_equal_the_offline_windows(
    with_statistic: TrainReport,
) -> None:
    bundle = with_statistic.bundle
    y = machine_sounds.abnormal(VALVE, 4.0)
    scorer = scorer_for(bundle)
    offline = score_signal(bundle, scorer, signal(y))
    stream, aggregator = bundle.extractor.stream(), WindowAggregator(*window_plan(bundle.features))
    live = []
    for start in range(0, len(y), 8000):
        vectors = stream.push(y[start : start + 8000])
        live += aggregator.push(scorer.score(vectors.data), vectors.first_sample, vectors.end_sample)
    assert len(live) > 0
    assert [w.start for w in live] == [w.start for w in offline.windows[: len(live)]]
    np.testing.assert_allclose([w.score for w in live], [w.score for w in offline.windows[: len(live)]], rtol=1e-5)
    plain = [w.score for w in aggregate_without_statistic(scorer.score(offline.vectors.data), offline, bundle)]
    assert not np.allclose(plain[: len(live)], [w.score for w in live])  # the statistic changed the scores


def test_the_engine_replaying_a_file_scores_the_windows_the_offline_path_scores(
    with_statistic: TrainReport, tmp_path: Path
) -> None:
    bundle = with_statistic.bundle
    y = machine_sounds.abnormal(VALVE, 4.0)
    sf.write(tmp_path / "valve.wav", y, machine_sounds.SAMPLE_RATE_HZ, subtype="FLOAT")  # the same samples
    metrics = Metrics(CollectorRegistry())
    runner = Runner(
        Engine(bundle, alerting=AlertingConfig(), metrics=metrics),
        Outputs(alerts=MemorySink(), dead_letters=MemorySink()),
        metrics,
    )
    source, streamed = ReplaySource([tmp_path / "valve.wav"], bundle.features, chunk_samples=8000), []
    while not source.exhausted:
        streamed += runner.process(source.poll(max_records=3))
    streamed += runner.flush()
    offline = score_signal(bundle, scorer_for(bundle), signal(y))
    assert len(streamed) == len(offline.windows) > 0
    np.testing.assert_allclose([w.score for w in streamed], [w.score for w in offline.windows], rtol=1e-5)


def aggregate_without_statistic(scores: VectorScores, offline: ScoredSignal, bundle: Bundle) -> list[ScoredWindow]:
    size, hop = window_plan(bundle.features)
    plain = VectorScores(scores.errors, scores.group_errors)
    return aggregate(plain, offline.vectors.first_sample, offline.vectors.end_sample, size=size, hop=hop)


def test_reconstruction_images_of_a_band_scaled_bundle_are_in_db(trained: TrainReport) -> None:
    y = machine_sounds.normal(VALVE, 2.0)
    scaled = trained.bundle.extractor.transform(y).data
    db = overlap_add_frames(LogMelExtractor(LogMelConfig()).transform(y).data, frames=5)
    np.testing.assert_allclose(images(trained.bundle, scaled)[0], db, atol=1e-3)


# -- audio chunks of one micro-batch: one feature push per stream, the windows chunk-by-chunk pushes give -----------


def audio_runner(bundle: Bundle) -> tuple[Runner, Metrics]:
    metrics = Metrics(CollectorRegistry())
    engine = Engine(bundle, alerting=AlertingConfig(), metrics=metrics, max_gap_s=30)
    return Runner(engine, Outputs(alerts=MemorySink(), dead_letters=MemorySink()), metrics), metrics


def chunks(stream: str, y: np.ndarray, start_s: float, chunk: int = 8000) -> list[AudioRecord]:
    rate = machine_sounds.SAMPLE_RATE_HZ
    return [AudioRecord(stream, start_s + i / rate, y[i : i + chunk], rate) for i in range(0, len(y), chunk)]


def count_pushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of samples of every push into a log-mel stream."""
    pushes: list[int] = []
    push = LogMelStream.push

    def counted(self: LogMelStream, samples: np.ndarray) -> Vectors:
        pushes.append(len(samples))
        return push(self, samples)

    monkeypatch.setattr(LogMelStream, "push", counted)
    return pushes


def one_by_one(bundle: Bundle, records: list[AudioRecord]) -> list[WindowScore]:
    runner, _ = audio_runner(bundle)
    return [window for record in records for window in runner.process([record])]


def test_consecutive_chunks_of_a_stream_in_one_micro_batch_are_one_feature_push_with_the_same_windows(
    trained: TrainReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = trained.bundle
    a = chunks("a", machine_sounds.abnormal(VALVE, 4.0), 1000.0)
    b = chunks("b", machine_sounds.normal(VALVE, 4.0), 50.0)
    records = [record for pair in zip(a, b, strict=True) for record in pair]  # interleaved, as a poll brings them
    expected = one_by_one(bundle, records)
    pushes = count_pushes(monkeypatch)
    runner, _ = audio_runner(bundle)
    result = runner.process_batch(records)
    assert pushes == [64000, 64000]  # one push per stream, not one per 0.5 s chunk
    windows = sorted(result.windows, key=lambda w: (w.stream, w.start_s))
    expected = sorted(expected, key=lambda w: (w.stream, w.start_s))
    assert [(w.stream, w.start_s, w.end_s) for w in windows] == [(w.stream, w.start_s, w.end_s) for w in expected]
    np.testing.assert_allclose([w.score for w in windows], [w.score for w in expected], rtol=1e-5)
    # Each record's position is its own last sample, so its offset is committed once its windows are scored.
    positions = [(p.stream, p.last_sample) for p in result.positions if p is not None]
    assert positions == [(s, 8000 * (i + 1) - 1) for i in range(8) for s in ("a", "b")]


def test_a_chunk_that_does_not_start_where_the_last_one_ended_starts_a_new_block(
    trained: TrainReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = trained.bundle
    first, second = machine_sounds.normal(VALVE, 2.0), machine_sounds.abnormal(VALVE, 2.0)
    # 2 s, then 1 s of silence on the wire (a dropped chunk, shorter than max_gap_s), then 2 s more
    records = chunks("a", first, 0.0) + chunks("a", second, 3.0)
    expected = one_by_one(bundle, records)
    pushes = count_pushes(monkeypatch)
    runner, _ = audio_runner(bundle)
    windows = runner.process(records)
    assert pushes == [32000, 32000]
    assert [w.start_s for w in windows] == [w.start_s for w in expected]
    np.testing.assert_allclose([w.score for w in windows], [w.score for w in expected], rtol=1e-5)


def test_a_chunk_sent_again_inside_a_micro_batch_is_late_and_dropped_as_chunk_by_chunk(
    trained: TrainReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = trained.bundle
    records = chunks("a", machine_sounds.normal(VALVE, 3.0), 0.0)
    records.insert(4, records[2])  # a producer retry: chunk 2 again after chunk 3
    expected_runner, expected_metrics = audio_runner(bundle)
    expected = [w for record in records for w in expected_runner.process([record])]
    pushes = count_pushes(monkeypatch)
    runner, metrics = audio_runner(bundle)
    windows = runner.process(records)
    assert pushes == [32000, 16000]  # the chunks before the repeat, then the two after it; the repeat is dropped
    assert metrics.late_samples._value.get() == expected_metrics.late_samples._value.get() == 8000
    np.testing.assert_allclose([w.score for w in windows], [w.score for w in expected], rtol=1e-5)
