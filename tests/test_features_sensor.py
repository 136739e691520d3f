"""Sensor features: scaled multivariate windows, whatever the chunking of the stream."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ae_monitor.config import FeaturesConfig, SensorConfig
from ae_monitor.errors import DataError, RecordError
from ae_monitor.features import build_extractor, concat_vectors
from ae_monitor.features.sensor import SensorExtractor, SensorStream, push_many
from ae_monitor.records import Vectors

CHANNELS = ("a", "b", "c")


def training_data(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal([10.0, -5.0, 0.0], [2.0, 0.5, 1.0], size=(n, 3))


def fitted(**settings: Any) -> SensorExtractor:
    return SensorExtractor.fit(SensorConfig.model_validate(settings), CHANNELS, [training_data()])


def feed_in_chunks(extractor: SensorExtractor, x: np.ndarray, sizes: list[int]) -> Vectors:
    stream, parts, at = extractor.stream(), [], 0
    for size in sizes:
        parts.append(stream.push(x[at : at + size]))
        at += size
    parts.append(stream.push(x[at:]))
    parts.append(stream.flush())
    return concat_vectors(parts, extractor.vector_size)


def test_windows_are_hop_aligned_to_the_stream_start() -> None:
    vectors = fitted(window_samples=10, hop_samples=3).transform(training_data(100))
    assert vectors.data.shape == (31, 30)  # (100 - 10) // 3 + 1 windows of 10 x 3 values
    assert vectors.first_sample[:3].tolist() == [0, 3, 6]
    assert (vectors.end_sample - vectors.first_sample == 10).all()


def test_vector_is_the_scaled_window_flattened_time_major() -> None:
    extractor = fitted(window_samples=4, hop_samples=4)
    x = training_data(8)
    offset, scale, _ = extractor.scaling_arrays()
    np.testing.assert_allclose(extractor.transform(x).data[1], ((x[4:8] - offset) / scale).ravel(), rtol=1e-6)
    assert extractor.vector_shape == (4, 3)
    assert extractor.group_names == CHANNELS


def test_standard_scaling_uses_the_training_mean_and_std() -> None:
    train = training_data()
    extractor = fitted(window_samples=1)
    np.testing.assert_allclose(extractor.to_manifest()["stats"]["mean"], train.mean(axis=0))
    np.testing.assert_allclose(extractor.to_manifest()["stats"]["std"], train.std(axis=0))
    scaled = extractor.transform(train).data
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=0), 1, atol=1e-5)


def test_a_constant_training_channel_gets_scale_one() -> None:
    train = np.column_stack([np.full(50, 7.0), np.arange(50.0)])
    extractor = SensorExtractor.fit(SensorConfig(window_samples=1), ("flat", "ramp"), [train])
    vectors = extractor.transform(np.array([[7.0, 0.0], [9.0, 0.0]]))
    np.testing.assert_allclose(vectors.data[:, 0], [0.0, 2.0])


def test_minmax_scaling_maps_the_training_range_to_the_unit_interval() -> None:
    train = training_data()
    vectors = fitted(window_samples=1, scaling="minmax").transform(train)
    np.testing.assert_allclose(vectors.data.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(vectors.data.max(axis=0), 1, atol=1e-6)


def test_fit_ignores_missing_values_and_refuses_a_channel_without_any() -> None:
    train = training_data()
    train[::2, 0] = np.nan
    assert np.isfinite(fitted_on(train).to_manifest()["stats"]["mean"]).all()
    train[:, 1] = np.nan
    with pytest.raises(DataError, match=r"\['b'\]"):
        fitted_on(train)


def fitted_on(train: np.ndarray) -> SensorExtractor:
    return SensorExtractor.fit(SensorConfig(), CHANNELS, [train])


def test_differences_hold_window_differences_and_need_one_more_sample() -> None:
    extractor = fitted(window_samples=5, hop_samples=5, differences=True)
    x = training_data(21)
    vectors = extractor.transform(x)
    assert vectors.data.shape == (4, 15)  # windows [0, 6), [5, 11), [10, 16), [15, 21)
    assert vectors.end_sample.tolist() == [6, 11, 16, 21]
    offset, scale, _ = extractor.scaling_arrays()
    np.testing.assert_allclose(vectors.data[1], np.diff((x[5:11] - offset) / scale, axis=0).ravel(), rtol=1e-5)


def test_nan_reject_raises_a_record_error_naming_the_channel_and_keeps_the_stream() -> None:
    stream = fitted(window_samples=2, hop_samples=1, nan_policy="reject").stream()
    x = training_data(5)
    stream.push(x[:2])
    bad = x[2:].copy()
    bad[1, 2] = np.nan
    with pytest.raises(RecordError, match="'c'") as caught:
        stream.push(bad)
    assert caught.value.reason == "nan_value"
    assert stream.push(x[2:3]).first_sample.tolist() == [1]  # the rejected chunk left no trace


def test_nan_fill_previous_carries_the_last_valid_value_across_pushes() -> None:
    extractor = fitted(window_samples=1, nan_policy="fill_previous")
    stream = extractor.stream()
    x = training_data(4)
    first = stream.push(x[:2])
    gap = np.full((2, 3), np.nan)
    filled = stream.push(gap)
    np.testing.assert_array_equal(filled.data, first.data[[1, 1]])


def test_nan_fill_previous_uses_the_fitted_mean_before_any_valid_value() -> None:
    vectors = fitted(window_samples=1, nan_policy="fill_previous").transform(np.full((1, 3), np.nan))
    np.testing.assert_allclose(vectors.data, 0.0, atol=1e-6)


def test_nan_fill_mean_gives_zero_after_standard_scaling() -> None:
    x = training_data(3)
    x[1, 0] = np.nan
    x[2, 1] = np.inf
    vectors = fitted(window_samples=1, nan_policy="fill_mean").transform(x)
    assert vectors.data[1, 0] == 0.0
    assert vectors.data[2, 1] == 0.0
    assert np.isfinite(vectors.data).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"window_samples": 60, "hop_samples": 1},
        {"window_samples": 10, "hop_samples": 4, "differences": True},
        {"window_samples": 7, "hop_samples": 7, "scaling": "minmax", "nan_policy": "fill_mean"},
    ],
)
def test_incremental_feeding_equals_batch_for_any_chunking(settings: dict[str, Any]) -> None:
    extractor = fitted(**settings)
    rng = np.random.default_rng(3)
    x = training_data(500, seed=1)
    x[rng.random(x.shape) < 0.05] = np.nan  # exercises the per-stream fill state
    batch = extractor.transform(x)
    for sizes in ([1] * 500, [7] * 71, [1000], list(rng.integers(1, 80, size=20))):
        chunked = feed_in_chunks(extractor, x, [int(s) for s in sizes])
        np.testing.assert_array_equal(chunked.data, batch.data)
        np.testing.assert_array_equal(chunked.first_sample, batch.first_sample)
        np.testing.assert_array_equal(chunked.end_sample, batch.end_sample)


def test_flush_drops_the_partial_window_and_starts_afresh() -> None:
    stream = fitted(window_samples=10, hop_samples=10).stream()
    assert len(stream.push(training_data(15))) == 1
    assert len(stream.flush()) == 0
    assert stream.push(training_data(10)).first_sample.tolist() == [0]


def test_stream_before_fit_is_refused_with_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no scaling statistics"):
        SensorExtractor(SensorConfig(), CHANNELS).stream()


def test_push_with_the_wrong_channel_count_is_a_record_error() -> None:
    with pytest.raises(RecordError, match=r"shape \(n, 3\)") as caught:
        fitted().stream().push(np.zeros((5, 2)))
    assert caught.value.reason == "shape"


def test_single_channel_samples_may_be_one_dimensional() -> None:
    extractor = SensorExtractor.fit(SensorConfig(window_samples=3), ("x",), [np.arange(10.0)])
    assert extractor.transform(np.arange(10.0)).data.shape == (8, 3)


def test_build_extractor_restores_the_fitted_statistics_from_the_manifest() -> None:
    cfg = SensorConfig(window_samples=5, scaling="minmax")
    extractor = SensorExtractor.fit(cfg, CHANNELS, [training_data()])
    restored = build_extractor(FeaturesConfig(kind="sensor", sensor=cfg), extractor.to_manifest())
    assert restored.group_names == CHANNELS
    assert restored.vector_shape == (5, 3)
    assert restored.sample_rate_hz == 1.0
    x = training_data(50, seed=9)
    np.testing.assert_array_equal(restored.transform(x).data, extractor.transform(x).data)


def test_build_extractor_refuses_a_manifest_without_statistics() -> None:
    features = FeaturesConfig(kind="sensor")
    manifest = SensorExtractor(features.sensor, CHANNELS).to_manifest()
    with pytest.raises(ValueError, match="no fitted scaling statistics"):
        build_extractor(features, manifest)
    manifest["stats"] = {"mean": [0.0, 1.0], "std": [1.0, 1.0]}
    with pytest.raises(ValueError, match="3 finite values"):
        build_extractor(features, manifest)


# --- push_many: many streams of one extractor in one pass ---------------------------------------------------------

PUSH_MANY_SETTINGS = [
    {"window_samples": 5, "hop_samples": 1},
    {"window_samples": 6, "hop_samples": 4},
    {"window_samples": 4, "hop_samples": 3, "differences": True},
    {"window_samples": 1, "hop_samples": 1, "differences": True},
    {"window_samples": 3, "hop_samples": 3, "scaling": "minmax"},
]


def push_one_by_one(streams: list[SensorStream], x: np.ndarray, counts: list[int]) -> tuple[Vectors, list[int]]:
    """What `push_many` must give: each stream's block pushed on its own, the vectors concatenated in order."""
    parts, at = [], 0
    for stream, n in zip(streams, counts, strict=True):
        parts.append(stream.push(x[at : at + n]))
        at += n
    return concat_vectors(parts, parts[0].data.shape[1]), [len(part) for part in parts]


def assert_same_vectors(actual: Vectors, expected: Vectors) -> None:
    np.testing.assert_array_equal(actual.data, expected.data)
    np.testing.assert_array_equal(actual.first_sample, expected.first_sample)
    np.testing.assert_array_equal(actual.end_sample, expected.end_sample)
    assert actual.data.dtype == expected.data.dtype


@pytest.mark.parametrize("settings", PUSH_MANY_SETTINGS, ids=[str(s) for s in PUSH_MANY_SETTINGS])
def test_push_many_gives_the_vectors_of_pushing_stream_by_stream_over_consecutive_batches(
    settings: dict[str, Any],
) -> None:
    extractor = fitted(**settings)
    many = [extractor.stream() for _ in range(6)]
    single = [extractor.stream() for _ in range(6)]
    rng = np.random.default_rng(11)
    for _ in range(25):
        counts = [int(n) for n in rng.choice([0, 0, 1, 2, 3, 5, 9, 17], size=len(many))]
        x = training_data(sum(counts), seed=int(rng.integers(1000)))
        vectors, made = push_many(many, x, counts)
        expected, expected_made = push_one_by_one(single, x, counts)
        assert_same_vectors(vectors, expected)
        assert made == expected_made
    # The streams are left in the same state: later pushes (a missing value included) agree too.
    later = training_data(20, seed=5)
    later[0, 1] = np.nan  # filled from the last sample each stream got before
    for a, b in zip(many, single, strict=True):
        assert_same_vectors(a.push(later), b.push(later))


def vectors_between(vectors: Vectors, start: int, stop: int) -> Vectors:
    return Vectors(vectors.data[start:stop], vectors.first_sample[start:stop], vectors.end_sample[start:stop])


@pytest.mark.parametrize("settings", PUSH_MANY_SETTINGS, ids=[str(s) for s in PUSH_MANY_SETTINGS])
def test_push_many_gives_each_stream_the_windows_of_its_whole_sample_sequence(settings: dict[str, Any]) -> None:
    extractor = fitted(**settings)
    streams = [extractor.stream() for _ in range(4)]
    fed: list[list[np.ndarray]] = [[] for _ in streams]
    got: list[list[Vectors]] = [[] for _ in streams]
    rng = np.random.default_rng(4)
    for _ in range(15):
        counts = [int(n) for n in rng.integers(0, 12, size=len(streams))]
        x = training_data(sum(counts), seed=int(rng.integers(1000)))
        vectors, made = push_many(streams, x, counts)
        assert sum(made) == len(vectors)
        row = vec = 0
        for k, (n, m) in enumerate(zip(counts, made, strict=True)):
            fed[k].append(x[row : row + n])
            got[k].append(vectors_between(vectors, vec, vec + m))
            row, vec = row + n, vec + m
    for k in range(len(streams)):
        assert_same_vectors(concat_vectors(got[k], extractor.vector_size), extractor.transform(np.concatenate(fed[k])))


def test_push_many_counts_windows_per_stream_and_skips_streams_without_rows() -> None:
    extractor = fitted(window_samples=4, hop_samples=2)
    streams = [extractor.stream() for _ in range(3)]
    vectors, made = push_many(streams, training_data(12), [0, 8, 4])
    assert made == [0, 3, 1]  # 8 samples: windows at 0, 2, 4; 4 samples: the window at 0
    assert vectors.first_sample.tolist() == [0, 2, 4, 0]
    assert vectors.end_sample.tolist() == [4, 6, 8, 4]
    vectors, made = push_many(streams, training_data(3), [1, 0, 2])
    assert made == [0, 0, 1]  # stream 1 got nothing; stream 2 now has samples 0..5: the window at 2
    assert vectors.first_sample.tolist() == [2]


def test_push_many_while_every_stream_is_still_warming_gives_no_vectors() -> None:
    extractor = fitted(window_samples=10, hop_samples=5)
    streams = [extractor.stream() for _ in range(3)]
    vectors, made = push_many(streams, training_data(12), [3, 9, 0])
    assert made == [0, 0, 0]
    assert vectors.data.shape == (0, extractor.vector_size)
    assert len(vectors.first_sample) == len(vectors.end_sample) == 0
    vectors, made = push_many(streams, training_data(8), [7, 1, 0])  # streams 0 and 1 fill their first window
    assert made == [1, 1, 0]
    assert vectors.first_sample.tolist() == [0, 0]


def test_a_stream_keeps_no_view_of_the_micro_batch_it_was_pushed_in() -> None:
    # Hundreds of streams go quiet after a batch; none may pin the batch's memory until it is evicted.
    cfg = SensorConfig(window_samples=4, hop_samples=1)
    extractor = SensorExtractor.fit(cfg, ("a", "b"), [np.arange(40.0).reshape(20, 2)])
    streams = [extractor.stream() for _ in range(3)]
    batch = np.arange(24.0).reshape(12, 2)
    push_many(streams, batch, [2, 5, 5])
    for stream in streams:
        assert stream._buf.base is None or stream._buf.base.shape[0] <= cfg.window_samples + 5
