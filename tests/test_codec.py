"""Compression: window codes in a safetensors file, decoded back to windows and to signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ae_monitor.cli import main
from ae_monitor.errors import DataError
from ae_monitor.jobs.codec import (
    decode_codes,
    encode_files,
    feature_vectors,
    quantise,
    read_codes,
    reconstruct_array,
    write_decoded_signals,
)
from ae_monitor.jobs.data import load_signals
from ae_monitor.model.bundle import load_bundle
from ae_monitor.sources.files import read_sensor_csv

# What each code dtype may add to the float32 codes' reconstruction MSE, relative to it.
EXTRA_MSE = {"float32": 0.0, "float16": 1e-3, "int8": 2e-2}


@pytest.fixture(scope="module")
def pump(sensor_data: tuple[Path, Path]) -> Path:
    return sensor_data[1] / "pump-1.csv"


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_round_trip_costs_at_most_the_stated_bound_over_the_recorded_error(
    sensor_bundle: Path, pump: Path, tmp_path: Path, dtype: str
) -> None:
    bundle = load_bundle(sensor_bundle)
    report = encode_files(bundle, [pump], tmp_path / "codes.safetensors", dtype=dtype)  # type: ignore[arg-type]
    recorded = bundle.extra["training_result"]["best_val_loss"]
    assert report.model_mse < 1.5 * recorded  # fresh normal data of the same machine
    assert report.decoded_mse <= report.model_mse * (1 + EXTRA_MSE[dtype]) + 1e-12
    decoded = decode_codes(bundle, tmp_path / "codes.safetensors")
    expected = reconstruct_array(bundle, feature_vectors(bundle, load_signals([pump], bundle.features)[0]).data)
    tolerance = {"float32": 1e-6, "float16": 1e-2, "int8": 1e-1}[dtype]
    np.testing.assert_allclose(decoded.vectors, expected, atol=tolerance)


def test_compression_ratio_is_what_the_file_holds(sensor_bundle: Path, pump: Path, tmp_path: Path) -> None:
    bundle = load_bundle(sensor_bundle)
    report = encode_files(bundle, [pump], tmp_path / "codes.safetensors", dtype="int8")
    codes = read_codes(tmp_path / "codes.safetensors")
    window, channels = bundle.extractor.vector_shape
    assert codes.codes.values.dtype == np.int8
    assert report.code_bytes_per_window == codes.codes.values.nbytes / len(codes.first_sample) == 6
    assert report.raw_bytes_per_window == window * channels * 8  # float64 per value
    assert report.window_ratio == pytest.approx(window * channels * 8 / 6)
    assert report.stream_ratio == pytest.approx(codes.stream_samples[0] * channels * 8 / codes.codes.values.nbytes)


def test_int8_codes_store_scale_and_zero_point_and_lose_at_most_half_a_step() -> None:
    codes = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32) * [1, 2, 3, 4, 5, 0]
    q = quantise(codes, "int8")
    assert q.scale is not None
    assert q.zero_point is not None
    assert np.all(np.abs(q.dequantise() - codes) <= q.scale / 2 + 1e-6)


def test_decoded_signals_are_the_overlap_added_windows_in_raw_units(
    sensor_bundle: Path, pump: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(sensor_bundle)
    encode_files(bundle, [pump], tmp_path / "codes.safetensors", dtype="float32")
    [path] = write_decoded_signals(bundle, decode_codes(bundle, tmp_path / "codes.safetensors"), tmp_path / "out")
    original = read_sensor_csv(pump, bundle.features.sensor)
    rebuilt = read_sensor_csv(path, bundle.features.sensor)
    np.testing.assert_allclose(rebuilt.ts_s, original.ts_s)
    error = np.abs(rebuilt.values - original.values).mean(axis=0)
    assert np.all(error < 0.5 * original.values.std(axis=0))  # close, not exact: it is a reconstruction


def test_codes_of_another_bundle_version_and_other_files_are_refused(
    sensor_bundle: Path, pump: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(sensor_bundle)
    encode_files(bundle, [pump], tmp_path / "codes.safetensors", dtype="float32")
    with pytest.raises(DataError, match="decode it with the bundle that encoded it"):
        decode_codes(bundle.__class__(**{**bundle.__dict__, "version": "other"}), tmp_path / "codes.safetensors")
    with pytest.raises(DataError, match="cannot read codes file"):
        read_codes(pump)


def test_encode_and_decode_commands_write_codes_vectors_and_signals(
    sensor_bundle: Path, pump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    codes = tmp_path / "codes.safetensors"
    assert (
        main(["-q", "encode", "--bundle", str(sensor_bundle), str(pump), "--out", str(codes), "--dtype", "int8"]) == 0
    )
    assert '"window_ratio": 160.0' in capsys.readouterr().out
    args = ["-q", "decode", "--bundle", str(sensor_bundle), "--codes", str(codes)]
    assert main([*args, "--out", str(tmp_path / "v.safetensors"), "--signals", str(tmp_path / "signals")]) == 0
    assert (tmp_path / "v.safetensors").is_file()
    assert (tmp_path / "signals" / "pump-1.csv").is_file()
