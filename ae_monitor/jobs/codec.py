"""`ae-monitor encode` and `ae-monitor decode`: the autoencoder as a compressor of windows.

Each feature vector (one window) is stored as its latent code: `model.encode(x)` (a VAE's is the mean). The codes
file is a safetensors file (no pickle; readable from any language) holding

    codes         (N, latent_dim)  float32, float16, or int8 (see below)
    scale         (latent_dim,)    float32; int8 only
    zero_point    (latent_dim,)    int32;   int8 only
    stream_index  (N,)             int32, index into the `streams` metadata list
    first_sample  (N,)  end_sample (N,)   int64, the window's sample range in its stream (end exclusive)
    start_s       (N,)  end_s      (N,)   float64, the window's times (epoch seconds for sensors, clip seconds
                                          for audio)

and string metadata: `format` ("ae-monitor-codes"), `format_version`, `bundle_name`, `bundle_version`, `dtype`,
`feature_kind`, `latent_dim`, and JSON lists `streams` and `stream_samples` (samples per stream, for overlap-add).

int8 is affine per code dimension over the file: `q = clip(round(code / scale) + zero_point, -128, 127)` and
`code ≈ (q - zero_point) * scale`, with scale = (max - min) / 255 of that dimension's codes.

Compression is reported two ways: per window (the raw samples one window covers at their original width — 2-byte
PCM for audio, 8-byte float64 values for sensor CSVs — against one code) and per stream (all raw samples against
all codes; overlapping windows make this much smaller).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from ae_monitor.errors import DataError
from ae_monitor.jobs.data import Signal, checked_channels, load_signals
from ae_monitor.model.bundle import Bundle
from ae_monitor.model.networks import Autoencoder
from ae_monitor.model.training import output_activation
from ae_monitor.records import Vectors

log = logging.getLogger(__name__)

CodeDtype = Literal["float32", "float16", "int8"]
CODE_DTYPES: tuple[CodeDtype, ...] = ("float32", "float16", "int8")
FORMAT = "ae-monitor-codes"
FORMAT_VERSION = "1"
# Original width of one raw value: DCASE/MIMII audio is 16-bit PCM; sensor CSV values are parsed as float64.
RAW_BYTES = {"logmel": 2, "sensor": 8}
_BATCH = 4096

F32 = npt.NDArray[np.float32]


def encode_array(model: Autoencoder, data: npt.NDArray[np.floating]) -> F32:
    """Latent codes (N, latent_dim) of vectors (N, D), in eval mode and batches."""
    parts = [_run(model.encode, data[i : i + _BATCH]) for i in range(0, len(data), _BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def decode_array(bundle: Bundle, codes: npt.NDArray[np.floating]) -> F32:
    """Reconstructed vectors (N, D) in feature units (the output activation applied) from codes (N, latent_dim)."""
    activation, network = output_activation(bundle.training.loss), bundle.network
    parts = [_run(lambda c: activation(network.decode(c)), codes[i : i + _BATCH]) for i in range(0, len(codes), _BATCH)]
    dim = bundle.network.input_dim
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def reconstruct_array(bundle: Bundle, data: npt.NDArray[np.floating]) -> F32:
    """What the model rebuilds of vectors (N, D): decode(encode(x)), the reconstruction scoring compares against."""
    if len(data) == 0:
        return np.zeros((0, bundle.network.input_dim), dtype=np.float32)
    return decode_array(bundle, encode_array(bundle.network, data))


def _run(fn: Callable[[torch.Tensor], torch.Tensor], batch: npt.NDArray[np.floating]) -> F32:
    with torch.inference_mode():
        out = fn(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return np.asarray(out.numpy(), dtype=np.float32)


@dataclass(frozen=True)
class Quantised:
    """Codes stored at `dtype`; `scale` and `zero_point` are set for int8."""

    values: npt.NDArray[Any]
    dtype: CodeDtype
    scale: F32 | None = None
    zero_point: npt.NDArray[np.int32] | None = None

    def dequantise(self) -> F32:
        if self.scale is None or self.zero_point is None:
            return self.values.astype(np.float32)
        return ((self.values.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def quantise(codes: F32, dtype: CodeDtype) -> Quantised:
    """Codes at `dtype`; int8 is affine per code dimension (see the module docstring)."""
    if dtype != "int8":
        return Quantised(codes.astype(dtype), dtype)
    low = codes.min(axis=0) if len(codes) else np.zeros(codes.shape[1], np.float32)
    high = codes.max(axis=0) if len(codes) else np.zeros(codes.shape[1], np.float32)
    span = (high - low).astype(np.float32)
    scale = np.where(span > 0, span / 255.0, 1.0).astype(np.float32)  # a constant dimension keeps scale 1
    zero_point = (-128 - np.round(low / scale)).astype(np.int32)
    q = np.clip(np.round(codes / scale) + zero_point, -128, 127).astype(np.int8)
    return Quantised(q, "int8", scale, zero_point)


@dataclass(frozen=True)
class CodesFile:
    """The contents of a codes file."""

    codes: Quantised
    stream_index: npt.NDArray[np.int32]
    first_sample: npt.NDArray[np.int64]
    end_sample: npt.NDArray[np.int64]
    start_s: npt.NDArray[np.float64]
    end_s: npt.NDArray[np.float64]
    streams: list[str]
    stream_samples: list[int]
    metadata: dict[str, str]

    def rows_of(self, stream: int) -> npt.NDArray[np.bool_]:
        rows: npt.NDArray[np.bool_] = self.stream_index == stream
        return rows


@dataclass(frozen=True)
class CodecReport:
    """What encoding cost and saved. Ratios are raw bytes / code bytes; MSEs are per value in feature units."""

    windows: int
    dtype: CodeDtype
    raw_dtype: str
    raw_bytes_per_window: float
    code_bytes_per_window: int
    window_ratio: float
    stream_ratio: float
    file_bytes: int
    model_mse: float
    decoded_mse: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def encode_files(
    bundle: Bundle, paths: Sequence[str | Path], out: str | Path, *, dtype: CodeDtype, rows: slice | None = None
) -> CodecReport:
    """`ae-monitor encode`: write the codes of every window of the files under `paths` (`rows` of each) to `out`;
    report the cost."""
    signals = load_signals(paths, bundle.features, rows=rows)
    parts = [_encode_signal(bundle, i, s) for i, s in enumerate(signals)]
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    codes, vectors = arrays.pop("codes"), arrays.pop("vectors")  # the vectors only measure the cost
    quantised = quantise(codes, dtype)
    write_codes(out, quantised, arrays, _metadata(bundle, dtype, signals))
    return _report(bundle, signals, vectors, codes, quantised, Path(out))


def feature_vectors(bundle: Bundle, signal: Signal) -> Vectors:
    """The bundle's feature vectors of `signal`, its channels put in the bundle's order first."""
    return bundle.extractor.transform(checked_channels(bundle, signal))


def _encode_signal(bundle: Bundle, index: int, signal: Signal) -> dict[str, npt.NDArray[Any]]:
    vectors = feature_vectors(bundle, signal)
    times = _sample_times(signal)
    return {
        "codes": encode_array(bundle.network, vectors.data),
        "vectors": vectors.data,
        "stream_index": np.full(len(vectors), index, dtype=np.int32),
        "first_sample": vectors.first_sample,
        "end_sample": vectors.end_sample,
        "start_s": np.interp(vectors.first_sample, np.arange(len(times)), times),
        "end_s": np.interp(vectors.end_sample, np.arange(len(times)), times),
    }


def _sample_times(signal: Signal) -> npt.NDArray[np.float64]:
    """The times of samples 0..n (one past the end extrapolated by the median period), so end times exist."""
    ts = signal.ts_s
    period = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0
    return np.append(ts, ts[-1] + period if len(ts) else 0.0)


def _metadata(bundle: Bundle, dtype: CodeDtype, signals: Sequence[Signal]) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_name": bundle.name,
        "bundle_version": bundle.version,
        "dtype": dtype,
        "feature_kind": bundle.features.kind,
        "latent_dim": str(bundle.model_config.latent_dim),
        "streams": json.dumps([s.name for s in signals]),
        "stream_samples": json.dumps([len(s.samples) for s in signals]),
    }


def write_codes(
    path: str | Path, codes: Quantised, arrays: Mapping[str, npt.NDArray[Any]], metadata: dict[str, str]
) -> None:
    tensors = {"codes": np.ascontiguousarray(codes.values), **{k: np.ascontiguousarray(v) for k, v in arrays.items()}}
    if codes.scale is not None and codes.zero_point is not None:
        tensors |= {"scale": codes.scale, "zero_point": codes.zero_point}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_codes(path: str | Path) -> CodesFile:
    """Read a codes file written by `encode_files`; DataError when it is not one."""
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for missing or malformed files
        raise DataError(f"cannot read codes file {path}: {exc}") from exc
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} is not an ae-monitor codes file (format {FORMAT} version {FORMAT_VERSION})")
    dtype = next((d for d in CODE_DTYPES if d == metadata.get("dtype")), None)
    if dtype is None:
        raise DataError(f"{path}: unknown code dtype {metadata.get('dtype')!r}")
    return CodesFile(
        codes=Quantised(tensors["codes"], dtype, tensors.get("scale"), tensors.get("zero_point")),
        stream_index=tensors["stream_index"],
        first_sample=tensors["first_sample"],
        end_sample=tensors["end_sample"],
        start_s=tensors["start_s"],
        end_s=tensors["end_s"],
        streams=json.loads(metadata["streams"]),
        stream_samples=json.loads(metadata["stream_samples"]),
        metadata=metadata,
    )


def _report(
    bundle: Bundle, signals: Sequence[Signal], vectors: F32, codes: F32, quantised: Quantised, out: Path
) -> CodecReport:
    kind = bundle.features.kind
    values_per_sample = len(bundle.extractor.group_names) if kind == "sensor" else 1
    raw_per_sample = RAW_BYTES[kind] * values_per_sample
    span = _window_span(bundle)
    code_bytes = quantised.values.dtype.itemsize * codes.shape[1]
    n = len(codes)
    stream_raw = sum(len(s.samples) for s in signals) * raw_per_sample
    return CodecReport(
        windows=n,
        dtype=quantised.dtype,
        raw_dtype="int16 PCM (mono)" if kind == "logmel" else "float64 per channel",
        raw_bytes_per_window=span * raw_per_sample,
        code_bytes_per_window=code_bytes,
        window_ratio=span * raw_per_sample / code_bytes,
        stream_ratio=stream_raw / max(1, n * code_bytes),
        file_bytes=out.stat().st_size,
        model_mse=_mse(decode_array(bundle, codes), vectors),
        decoded_mse=_mse(decode_array(bundle, quantised.dequantise()), vectors),
    )


def _window_span(bundle: Bundle) -> int:
    """Samples one vector covers: window (+1 with differences) for sensors; the stacked frames' span for audio."""
    if bundle.features.kind == "sensor":
        cfg = bundle.features.sensor
        return cfg.window_samples + int(cfg.differences)
    mel = bundle.features.logmel
    return (mel.frames - 1) * mel.hop_length + mel.n_fft


def _mse(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.mean(np.square(a.astype(np.float64) - b))) if a.size else float("nan")


@dataclass(frozen=True)
class Decoded:
    """Reconstructed vectors per window, with the codes file they came from."""

    vectors: F32
    source: CodesFile


def decode_codes(bundle: Bundle, path: str | Path) -> Decoded:
    """Rebuild the windows of a codes file with `bundle`; refuses codes made by another bundle version."""
    codes = read_codes(path)
    if codes.metadata.get("bundle_version") != bundle.version:
        raise DataError(
            f"{path} was encoded by bundle version {codes.metadata.get('bundle_version')}, "
            f"not {bundle.version}; decode it with the bundle that encoded it"
        )
    return Decoded(decode_array(bundle, codes.codes.dequantise()), codes)


def write_decoded_signals(bundle: Bundle, decoded: Decoded, out_dir: str | Path) -> list[Path]:
    """One signal per stream under `out_dir`: `<stream>.csv` (sensors, overlap-added, raw units) or `<stream>.wav`
    (audio, approximate: log-mel inversion with Griffin-Lim from a random phase)."""
    source = decoded.source
    paths = []
    for i, name in enumerate(source.streams):
        rows = source.rows_of(i)
        n = source.stream_samples[i]
        if bundle.features.kind == "sensor":
            values = windows_to_samples(bundle, decoded.vectors[rows], source.first_sample[rows], n)
            times = _times_from_windows(source, rows, n)
            paths.append(write_sensor_csv(Path(out_dir) / f"{name}.csv", times, values, bundle.extractor.group_names))
        else:
            audio = vectors_to_audio(bundle, decoded.vectors[rows], n)
            paths.append(write_wav(Path(out_dir) / f"{name}.wav", audio, bundle.features.logmel.sample_rate_hz))
    return paths


def windows_to_samples(
    bundle: Bundle, vectors: npt.NDArray[np.floating], first_sample: npt.NDArray[np.int64], n: int
) -> npt.NDArray[np.float64]:
    """Sensor samples (n, channels) in raw units from scaled windows: un-scaled, overlap-added."""
    from ae_monitor.features.inverse import overlap_add_windows
    from ae_monitor.features.sensor import SensorExtractor

    if not isinstance(bundle.extractor, SensorExtractor):
        raise DataError("only sensor bundles have windows of samples")
    return overlap_add_windows(vectors, first_sample, n, bundle.extractor)


def vectors_to_audio(
    bundle: Bundle, vectors: npt.NDArray[np.floating], n: int, *, reference: npt.NDArray[np.floating] | None = None
) -> F32:
    """Approximate audio of `n` samples from log-mel vectors (see ae_monitor.features.inverse)."""
    from ae_monitor.features.inverse import logmel_to_audio, overlap_add_frames
    from ae_monitor.features.logmel import LogMelExtractor

    cfg = bundle.features.logmel
    image = overlap_add_frames(vectors, frames=cfg.frames)
    if isinstance(bundle.extractor, LogMelExtractor):
        image = bundle.extractor.to_db(image)  # band-scaled bundles: back to dB
    return logmel_to_audio(image, cfg, length=n, reference=reference)


def _times_from_windows(source: CodesFile, rows: npt.NDArray[np.bool_], n: int) -> npt.NDArray[np.float64]:
    # Codes keep window times, not sample times: sample times are interpolated between window starts and ends.
    known, index = np.unique(np.concatenate([source.first_sample[rows], source.end_sample[rows]]), return_index=True)
    times = np.concatenate([source.start_s[rows], source.end_s[rows]])[index]
    if len(known) < 2:
        return np.arange(n, dtype=np.float64)
    slope = (times[-1] - times[0]) / (known[-1] - known[0])
    positions = np.arange(n, dtype=np.float64)
    inside = np.interp(positions, known, times)
    result: npt.NDArray[np.float64] = np.where(
        positions > known[-1], times[-1] + (positions - known[-1]) * slope, inside
    )
    return result


def write_sensor_csv(
    path: Path, ts_s: npt.NDArray[np.float64], values: npt.NDArray[np.float64], channels: Sequence[str]
) -> Path:
    """A CSV that `read_sensor_csv` reads back: ISO UTC `datetime`, then the channels; NaN is an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["datetime", *channels])
        for t, row in zip(ts_s, values, strict=True):
            stamp = datetime.fromtimestamp(float(t), UTC).isoformat(timespec="milliseconds")
            writer.writerow([stamp, *("" if np.isnan(v) else f"{v:.6g}" for v in row)])
    return path


def write_wav(path: Path, audio: npt.NDArray[np.floating], sample_rate_hz: int) -> Path:
    """16-bit PCM WAV; samples are clipped to [-1, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate_hz, subtype="PCM_16")
    return path


VECTORS_FORMAT = "ae-monitor-vectors"


def write_vectors(
    path: str | Path, bundle: Bundle, vectors: npt.NDArray[np.floating], arrays: Mapping[str, npt.NDArray[Any]]
) -> Path:
    """Windows as a safetensors file: `vectors` (N, time steps, groups) in feature units plus `arrays` (per-window
    positions), with metadata naming the bundle, the vector shape and the group (channel or mel band) names."""
    steps, groups = bundle.extractor.vector_shape
    tensors = {"vectors": np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, steps, groups)}
    tensors |= {key: np.ascontiguousarray(value) for key, value in arrays.items()}
    metadata = {
        "format": VECTORS_FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_name": bundle.name,
        "bundle_version": bundle.version,
        "feature_kind": bundle.features.kind,
        "group_names": json.dumps(list(bundle.extractor.group_names)),
        "units": "feature units: scaled sensor values, or log-mel dB",
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


def write_decoded_vectors(bundle: Bundle, decoded: Decoded, path: str | Path) -> Path:
    """The decoded windows with their streams and positions (see `write_vectors`)."""
    source = decoded.source
    positions: dict[str, npt.NDArray[Any]] = {
        "stream_index": source.stream_index,
        "first_sample": source.first_sample,
        "end_sample": source.end_sample,
        "start_s": source.start_s,
        "end_s": source.end_s,
    }
    return write_vectors(path, bundle, decoded.vectors, positions)
