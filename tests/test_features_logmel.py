"""Audio features: log-mel vectors equal librosa's, whatever the chunking of the stream."""

from __future__ import annotations

import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from ae_monitor.config import FeaturesConfig, LogMelConfig
from ae_monitor.errors import DataError, SampleRateError
from ae_monitor.features import build_extractor, concat_vectors
from ae_monitor.features.logmel import LogMelExtractor, prepare_audio
from ae_monitor.records import Vectors

DCASE_CLIP = Path("audio/dcase2020-pump/normal_id_06_00000933.wav")


def librosa_vectors(y: np.ndarray, cfg: LogMelConfig) -> np.ndarray:
    """The reference: librosa's mel spectrogram in float64, in dB, frames stacked frame-major."""
    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float64),
        sr=cfg.sample_rate_hz,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        power=cfg.power,
        pad_mode=cfg.pad_mode,
    )
    log_mel = 10 * np.log10(np.maximum(mel, sys.float_info.epsilon)).T
    stacked = np.lib.stride_tricks.sliding_window_view(log_mel, cfg.frames, axis=0)
    return stacked.transpose(0, 2, 1).reshape(len(stacked), -1)


def machine_like_signal(n: int, seed: int = 0) -> np.ndarray:
    """Harmonics, noise, a swelling envelope and a stretch of digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    y = 0.3 * np.sin(2 * np.pi * 120 * t) + 0.1 * np.sin(2 * np.pi * 2400 * t) + 0.05 * rng.standard_normal(n)
    y *= np.linspace(0.2, 1.0, n)
    y[n // 3 : n // 3 + 3000] = 0.0
    return y.astype(np.float32)


def feed_in_chunks(extractor: LogMelExtractor, y: np.ndarray, sizes: list[int]) -> Vectors:
    stream, parts, at = extractor.stream(), [], 0
    for size in sizes:
        parts.append(stream.push(y[at : at + size]))
        at += size
    parts.append(stream.push(y[at:]))
    parts.append(stream.flush())
    return concat_vectors(parts, extractor.vector_shape[0] * extractor.vector_shape[1])


def random_chunk_sizes(rng: np.random.Generator, n: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(int(rng.choice([1, 7, 100, 511, 513, 1000, 4096, int(rng.integers(1, 5000))])))
    return sizes


def assert_same_vectors(actual: Vectors, expected: Vectors) -> None:
    assert actual.data.shape == expected.data.shape
    if len(expected):
        assert np.abs(actual.data - expected.data).max() < 1e-5
    np.testing.assert_array_equal(actual.first_sample, expected.first_sample)
    np.testing.assert_array_equal(actual.end_sample, expected.end_sample)


def test_vectors_equal_librosa_within_1e_4_db_on_a_synthetic_signal() -> None:
    cfg = LogMelConfig()
    y = machine_like_signal(40000)
    vectors = LogMelExtractor(cfg).transform(y)
    expected = librosa_vectors(y, cfg)
    assert vectors.data.shape == expected.shape
    assert np.abs(vectors.data - expected).max() < 1e-4


@pytest.mark.shared_data
def test_vectors_equal_librosa_on_the_real_dcase_pump_clip(shared_data: Path) -> None:
    y, rate = sf.read(shared_data / DCASE_CLIP, dtype="float32")
    cfg = LogMelConfig()
    vectors = LogMelExtractor(cfg).transform(prepare_audio(y, rate, cfg))
    assert vectors.data.shape == (309, 640)
    assert np.abs(vectors.data - librosa_vectors(y, cfg)).max() < 1e-4


def test_ten_second_clip_gives_309_vectors_of_640_values_in_float32() -> None:
    vectors = LogMelExtractor(LogMelConfig()).transform(machine_like_signal(160000))
    assert vectors.data.shape == (309, 640)
    assert vectors.data.dtype == np.float32


def test_reflect_padding_matches_librosa_reflect_mode() -> None:
    cfg = LogMelConfig(pad_mode="reflect")
    y = machine_like_signal(30001, seed=3)
    assert np.abs(LogMelExtractor(cfg).transform(y).data - librosa_vectors(y, cfg)).max() < 1e-4


def test_other_settings_match_librosa_too() -> None:
    cfg = LogMelConfig(n_fft=512, hop_length=160, n_mels=64, frames=3, power=1.0)
    y = machine_like_signal(20000, seed=4)
    assert np.abs(LogMelExtractor(cfg).transform(y).data - librosa_vectors(y, cfg)).max() < 1e-4


def test_vectors_are_frame_major_stacks_of_consecutive_frames() -> None:
    vectors = LogMelExtractor(LogMelConfig()).transform(machine_like_signal(20000))
    frames = vectors.data.reshape(len(vectors), 5, 128)
    # Vector i+1's first frame is vector i's second frame.
    np.testing.assert_array_equal(frames[1:, 0], frames[:-1, 1])


def test_each_vector_covers_the_samples_of_its_frames_clipped_to_the_signal() -> None:
    vectors = LogMelExtractor(LogMelConfig()).transform(machine_like_signal(160000))
    assert vectors.first_sample[:3].tolist() == [0, 0, 512]  # frame t starts at t * 512 - 512
    assert vectors.end_sample[0] == 4 * 512 + 512  # frame 4 ends at 4 * 512 + 512
    assert vectors.end_sample[-1] == 160000
    assert (np.diff(vectors.first_sample[1:]) == 512).all()


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"n_fft": 256, "hop_length": 100, "n_mels": 20, "frames": 3},
        {"n_fft": 255, "hop_length": 255, "n_mels": 16, "frames": 1},
    ],
)
def test_incremental_feeding_equals_batch_for_any_chunking(pad_mode: str, settings: dict[str, int]) -> None:
    extractor = LogMelExtractor(LogMelConfig.model_validate({"pad_mode": pad_mode, **settings}))
    rng = np.random.default_rng(7)
    for n in (0, 1, 300, 513, 2048, 5000, 16385):
        y = machine_like_signal(n, seed=n) if n else np.zeros(0, dtype=np.float32)
        batch = extractor.transform(y)
        for sizes in ([1] * min(n, 600), [7] * (n // 7), [1000] * (n // 1000), random_chunk_sizes(rng, n)):
            assert_same_vectors(feed_in_chunks(extractor, y, sizes), batch)


def test_samples_are_emitted_as_soon_as_their_frames_are_complete() -> None:
    stream = LogMelExtractor(LogMelConfig()).stream()
    # Frames 0..4 need padded samples up to 4 * 512 + 1024, i.e. signal samples up to 2560.
    assert len(stream.push(np.zeros(2559, dtype=np.float32))) == 0
    assert len(stream.push(np.zeros(1, dtype=np.float32))) == 1


def test_flush_starts_a_new_stream_counted_from_zero() -> None:
    extractor = LogMelExtractor(LogMelConfig())
    y = machine_like_signal(20000)
    stream = extractor.stream()
    first = concat_vectors([stream.push(y), stream.flush()], 640)
    second = concat_vectors([stream.push(y), stream.flush()], 640)
    assert_same_vectors(second, first)


def test_signal_shorter_than_the_stacked_frames_gives_no_vectors() -> None:
    vectors = LogMelExtractor(LogMelConfig()).transform(np.ones(1000, dtype=np.float32))
    assert vectors.data.shape == (0, 640)


def test_push_refuses_multichannel_samples() -> None:
    with pytest.raises(DataError, match="prepare_audio"):
        LogMelExtractor(LogMelConfig()).stream().push(np.zeros((100, 2), dtype=np.float32))


def test_wrong_sample_rate_is_refused_with_a_hint() -> None:
    with pytest.raises(SampleRateError, match=r"got 44100 Hz, the features expect 16000 Hz; set features\.logmel"):
        prepare_audio(np.zeros(4410, dtype=np.float32), 44100, LogMelConfig())


def test_resample_true_converts_to_the_feature_rate() -> None:
    t = np.arange(44100) / 44100
    y = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = prepare_audio(y, 44100, LogMelConfig(resample=True))
    assert out.dtype == np.float32
    assert len(out) == 16000
    assert abs(np.sqrt(np.mean(out[1000:-1000] ** 2)) - np.sqrt(0.5)) < 0.01


def test_multichannel_audio_is_averaged_by_default() -> None:
    stereo = np.stack([np.full(100, 0.2), np.full(100, 0.4)], axis=1).astype(np.float32)
    np.testing.assert_allclose(prepare_audio(stereo, 16000, LogMelConfig()), 0.3, rtol=1e-6)


def test_channel_index_selects_one_channel() -> None:
    stereo = np.stack([np.full(100, 0.2), np.full(100, 0.4)], axis=1).astype(np.float32)
    np.testing.assert_array_equal(prepare_audio(stereo, 16000, LogMelConfig(channel=1)), np.float32(0.4))


def test_channel_index_out_of_range_names_index_and_channel_count() -> None:
    stereo = np.zeros((100, 2), dtype=np.float32)
    with pytest.raises(DataError, match=r"channel = 5 .* 2 channel"):
        prepare_audio(stereo, 16000, LogMelConfig(channel=5))


def test_mono_audio_passes_through_as_float32() -> None:
    y = np.linspace(-1, 1, 50)
    out = prepare_audio(y, 16000, LogMelConfig())
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, y, rtol=1e-6)


def test_build_extractor_gives_the_dcase_layout_and_round_trips_its_manifest() -> None:
    features = FeaturesConfig()
    extractor = build_extractor(features)
    assert extractor.vector_shape == (5, 128)
    assert extractor.group_names[0] == "mel_000"
    assert extractor.group_names[-1] == "mel_127"
    assert extractor.sample_rate_hz == 16000.0
    restored = build_extractor(features, extractor.to_manifest())
    assert restored.to_manifest() == extractor.to_manifest()


def test_build_extractor_refuses_a_manifest_of_another_kind() -> None:
    with pytest.raises(ValueError, match="'sensor' features"):
        build_extractor(FeaturesConfig(), {"kind": "sensor", "stats": None})


# ---- band scaling: per-band standardisation fitted on the training audio ----------------------------------------


def band_scaled(**settings: object) -> LogMelConfig:
    return LogMelConfig(band_scaling="standard", **settings)  # type: ignore[arg-type]


def test_band_scaled_vectors_are_the_db_vectors_standardised_by_the_training_statistics() -> None:
    train, test = machine_like_signal(48000, seed=1), machine_like_signal(32000, seed=2)
    fitted = LogMelExtractor.fit(band_scaled(), [train])
    db = LogMelExtractor(LogMelConfig()).transform(test).data.reshape(-1, 5, 128)
    assert fitted.band_mean is not None
    assert fitted.band_std is not None
    expected = (db - fitted.band_mean) / fitted.band_std
    np.testing.assert_allclose(fitted.transform(test).data.reshape(-1, 5, 128), expected, atol=2e-4)


def test_band_statistics_are_the_mean_and_std_of_the_training_frames_per_band() -> None:
    train = machine_like_signal(48000, seed=1)
    fitted = LogMelExtractor.fit(band_scaled(), [train])
    frames = LogMelExtractor(LogMelConfig()).log_mel_frames(train).astype(np.float64)
    assert fitted.band_mean is not None
    assert fitted.band_std is not None
    np.testing.assert_allclose(fitted.band_mean, frames.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(fitted.band_std, np.maximum(frames.std(axis=0), 0.5), atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_scaled_stream_fed_in_chunks_equals_the_offline_extraction(seed: int) -> None:
    # The live pipeline pushes chunks into a stream; `train`/`score` extract whole files: both must agree.
    fitted = LogMelExtractor.fit(band_scaled(), [machine_like_signal(48000, seed=9)])
    y = machine_like_signal(70001, seed=seed)
    rng = np.random.default_rng(seed)
    assert_same_vectors(feed_in_chunks(fitted, y, random_chunk_sizes(rng, len(y))), fitted.transform(y))


def test_band_scaled_extractor_round_trips_its_manifest_as_json() -> None:
    import json

    fitted = LogMelExtractor.fit(band_scaled(), [machine_like_signal(48000, seed=1)])
    features = FeaturesConfig(logmel=band_scaled())
    restored = build_extractor(features, json.loads(json.dumps(fitted.to_manifest())))
    y = machine_like_signal(20000, seed=3)
    np.testing.assert_array_equal(restored.transform(y).data, fitted.transform(y).data)


def test_band_scaled_config_without_fitted_statistics_is_refused() -> None:
    features = FeaturesConfig(logmel=band_scaled())
    with pytest.raises(ValueError, match="band_mean"):
        build_extractor(features, {"kind": "logmel", "config": features.logmel.model_dump(mode="json")})


def test_a_manifest_written_before_band_scaling_existed_loads_as_plain_db() -> None:
    old = {
        "kind": "logmel",
        "config": {k: v for k, v in LogMelConfig().model_dump(mode="json").items() if k != "band_scaling"},
    }
    features = FeaturesConfig.model_validate({"logmel": old["config"]})
    assert features.logmel.band_scaling == "none"
    y = machine_like_signal(20000)
    np.testing.assert_array_equal(
        build_extractor(features, old).transform(y).data, LogMelExtractor(LogMelConfig()).transform(y).data
    )


def test_to_db_undoes_the_band_scaling() -> None:
    fitted = LogMelExtractor.fit(band_scaled(), [machine_like_signal(48000, seed=1)])
    y = machine_like_signal(20000, seed=4)
    db = LogMelExtractor(LogMelConfig()).transform(y).data.reshape(-1, 128)
    np.testing.assert_allclose(fitted.to_db(fitted.transform(y).data.reshape(-1, 128)), db, atol=1e-3)


def test_a_band_that_never_moved_in_training_is_divided_by_the_floor_not_by_zero() -> None:
    fitted = LogMelExtractor.fit(band_scaled(), [np.zeros(32000, dtype=np.float32)])
    assert fitted.band_std is not None
    assert fitted.band_std.min() == pytest.approx(0.5)
    assert np.isfinite(fitted.transform(machine_like_signal(20000)).data).all()


def test_fitting_band_scaling_on_too_little_audio_is_a_data_error() -> None:
    with pytest.raises(DataError, match="frames"):
        LogMelExtractor.fit(band_scaled(), [np.zeros(10, dtype=np.float32)])


def test_without_band_scaling_fit_learns_nothing() -> None:
    plain = LogMelExtractor.fit(LogMelConfig(), [machine_like_signal(48000)])
    assert plain.band_mean is None
    assert plain.band_std is None
    assert "band_mean" not in plain.to_manifest()
