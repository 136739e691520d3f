"""Stage 3, audio features: streaming log-mel vectors, the DCASE Task 2 autoencoder baseline recipe.

With the default `LogMelConfig`: 16 kHz audio, 1024-point STFT (periodic Hann window) every 512 samples, centred
frames (`pad_mode` padding of n_fft // 2 samples at both ends), power spectrum, 128 mel bands (librosa's Slaney
filters), `10 * log10(max(mel, eps))` with eps = `sys.float_info.epsilon`, then 5 consecutive frames stacked
frame-major into one 640-value vector, sliding by one frame. A 10 s clip gives 313 frames and 309 vectors; the
values equal `librosa.feature.melspectrogram(y, sr=16000, n_fft=1024, hop_length=512, n_mels=128)` in dB.
With `band_scaling = "standard"` each band is then standardised by statistics fitted on training audio (`fit`).

The STFT is computed here rather than by librosa so that the same code runs incrementally: a stream emits every
frame whose samples have all arrived and applies the end padding on `flush`.

    >>> import numpy as np
    >>> from ae_monitor.config import LogMelConfig
    >>> LogMelExtractor(LogMelConfig()).transform(np.zeros(160000, dtype=np.float32)).data.shape
    (309, 640)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import librosa
import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.sparse
from scipy.signal import get_window

from ae_monitor.config import LogMelConfig
from ae_monitor.errors import DataError, SampleRateError
from ae_monitor.features import concat_vectors
from ae_monitor.records import Vectors

__all__ = ["LogMelExtractor", "LogMelStream", "prepare_audio"]

EPS = sys.float_info.epsilon
# The smallest band standard deviation band scaling divides by, in dB.
MIN_BAND_STD_DB = 0.5
# Frames transformed per FFT call: ~1 MB of frames and ~1 MB of spectrum per block. Larger blocks were slower per
# frame (1024 frames: 0.14-0.27 ms of CPU per audio second against 0.09-0.12 at 128-512, pushes of 5-60 s): their
# multi-MB temporaries are mapped afresh by the allocator on every call and page-faulted in.
_BLOCK_FRAMES = 256
# float32 stays within 2e-5 dB of librosa in float64 (measured on the DCASE clips) at half the cost of float64.
_DTYPE = np.float32

F32 = npt.NDArray[np.float32]


def prepare_audio(samples: np.ndarray, sample_rate_hz: int, cfg: LogMelConfig) -> F32:
    """Mono float32 audio at `cfg.sample_rate_hz` from (n,) or (n, channels) samples.

    `cfg.channel` 'mean' averages the channels, an index selects one. Another sample rate raises SampleRateError
    unless `cfg.resample` is true, when it is resampled (librosa / soxr).
    """
    mono = _select_channel(np.asarray(samples), cfg.channel)
    if sample_rate_hz == cfg.sample_rate_hz:
        return mono
    if not cfg.resample:
        raise SampleRateError(
            f"audio at {sample_rate_hz} Hz: got {sample_rate_hz} Hz, the features expect {cfg.sample_rate_hz} Hz; "
            "set features.logmel.resample = true to resample"
        )
    resampled = librosa.resample(mono, orig_sr=sample_rate_hz, target_sr=cfg.sample_rate_hz)
    return np.ascontiguousarray(resampled, dtype=np.float32)


def _select_channel(samples: np.ndarray, channel: str | int) -> F32:
    if samples.ndim not in (1, 2):
        raise DataError(f"audio must have shape (n,) or (n, channels), got {samples.shape}")
    frames = samples.reshape(len(samples), -1)
    if frames.shape[1] == 1 and channel in ("mean", 0):
        # Mono: the samples themselves (the mean of one channel, without its float64 pass over every chunk).
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    if channel == "mean":
        return np.ascontiguousarray(frames.mean(axis=1, dtype=np.float64), dtype=np.float32)
    if not isinstance(channel, int) or channel >= frames.shape[1]:
        raise DataError(
            f"features.logmel.channel = {channel} is out of range: the audio has {frames.shape[1]} channel(s)"
        )
    return np.ascontiguousarray(frames[:, channel], dtype=np.float32)


class LogMelExtractor:
    """Log-mel vectors of mono audio already at `cfg.sample_rate_hz` (see `prepare_audio`).

    With `cfg.band_scaling = "standard"` every mel band's dB is standardised, `(dB - band_mean) / band_std`, by
    statistics of the training audio (`fit`); they are applied per frame, so the streaming and offline paths give
    the same values. Scaling makes every band's error count in units of that band's normal variation: in dB, loud
    and fluctuating bands dominate the error and a fault that makes the sound quieter or steadier scores *lower*.
    """

    def __init__(
        self,
        cfg: LogMelConfig,
        *,
        band_mean: npt.ArrayLike | None = None,
        band_std: npt.ArrayLike | None = None,
    ) -> None:
        self.cfg = cfg
        self.band_mean, self.band_std = _band_statistics(cfg, band_mean, band_std)
        # dB = 10 log10(mel); scaled = (dB - mean) / std = log10(mel) * (10 / std) - mean / std: one multiply and one
        # add per value, so band scaling costs what the plain dB conversion costs.
        self._gain: F32 | np.float32 = np.float32(10.0)
        self._offset: F32 | None = None
        if self.band_mean is not None and self.band_std is not None:
            self._gain = (10.0 / self.band_std).astype(_DTYPE)
            self._offset = (-self.band_mean / self.band_std).astype(_DTYPE)
        self.vector_shape: tuple[int, int] = (cfg.frames, cfg.n_mels)
        self.group_names: tuple[str, ...] = tuple(f"mel_{i:03d}" for i in range(cfg.n_mels))
        self.sample_rate_hz: float = float(cfg.sample_rate_hz)
        self._window = get_window("hann", cfg.n_fft, fftbins=True).astype(_DTYPE)
        basis = librosa.filters.mel(
            sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz
        )
        # Each mel filter spans a few dozen bins (~1,000 non-zeros of 65,664 by default): a sparse product is ~30x
        # cheaper than a dense one and needs no BLAS threads.
        self._mel_basis = scipy.sparse.csr_array(basis.astype(_DTYPE))

    @classmethod
    def fit(cls, cfg: LogMelConfig, signals: Sequence[npt.NDArray[np.floating]]) -> LogMelExtractor:
        """The extractor with band statistics fitted on the log-mel frames of `signals` (mono training audio).

        Without band scaling nothing is fitted. Raises DataError when the signals hold no complete frame.
        """
        if cfg.band_scaling == "none":
            return cls(cfg)
        plain = cls(cfg.model_copy(update={"band_scaling": "none"}))
        # Sums per signal, not one array of every frame: hours of training audio stay a few KB here.
        count, total, squares = 0, np.zeros(cfg.n_mels), np.zeros(cfg.n_mels)
        for y in signals:
            db = plain.log_mel_frames(np.asarray(y, dtype=_DTYPE)).astype(np.float64)
            count, total, squares = count + len(db), total + db.sum(axis=0), squares + np.square(db).sum(axis=0)
        if count < 2:
            raise DataError("band scaling needs at least 2 log-mel frames of training audio")
        mean = total / count
        return cls(cfg, band_mean=mean, band_std=np.sqrt(np.maximum(squares / count - mean**2, 0.0)))

    @classmethod
    def from_manifest(cls, cfg: LogMelConfig, manifest: Mapping[str, Any] | None) -> LogMelExtractor:
        """The extractor a `to_manifest()` result describes (ValueError when its band statistics are unusable)."""
        if cfg.band_scaling == "none":
            return cls(cfg)
        state = manifest or {}
        if "band_mean" not in state or "band_std" not in state:
            raise ValueError("band_scaling 'standard' needs the fitted band_mean and band_std; retrain the bundle")
        return cls(cfg, band_mean=state["band_mean"], band_std=state["band_std"])

    def stream(self) -> LogMelStream:
        return LogMelStream(self)

    def log_mel_frames(self, samples: npt.NDArray[np.floating]) -> F32:
        """The unstacked log-mel frames (T, n_mels) of a whole mono signal, in this extractor's units."""
        stream = self.stream()
        mels = [stream.push_frames(samples), stream.flush_frames()]
        return np.concatenate(mels)

    def transform(self, samples: np.ndarray) -> Vectors:
        stream = self.stream()
        return concat_vectors([stream.push(samples), stream.flush()], self.cfg.frames * self.cfg.n_mels)

    def to_manifest(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": "logmel", "config": self.cfg.model_dump(mode="json")}
        if self.band_mean is not None and self.band_std is not None:
            state |= {"band_mean": self.band_mean.tolist(), "band_std": self.band_std.tolist()}
        return state

    def to_db(self, log_mel: npt.NDArray[np.floating]) -> F32:
        """Undo the band scaling of log-mel values (..., n_mels): dB again (decoding audio needs dB)."""
        values = np.asarray(log_mel, dtype=_DTYPE)
        if self.band_mean is None or self.band_std is None:
            return values
        return np.asarray(values * self.band_std + self.band_mean, dtype=_DTYPE)

    def log_mel(self, frames: np.ndarray) -> F32:
        """Log-mel spectra (T, n_mels) of T frames of n_fft samples (T, n_fft): dB, band-scaled if configured."""
        parts = [self._log_mel_block(frames[i : i + _BLOCK_FRAMES]) for i in range(0, len(frames), _BLOCK_FRAMES)]
        return np.concatenate(parts) if parts else np.zeros((0, self.cfg.n_mels), dtype=_DTYPE)

    def _log_mel_block(self, frames: np.ndarray) -> F32:
        spectrum = scipy.fft.rfft(frames * self._window, axis=1)  # scipy's float32 FFT is ~10x numpy's
        # For power 2, squaring the parts avoids the square root inside np.abs.
        square = self.cfg.power == 2.0
        power = spectrum.real**2 + spectrum.imag**2 if square else np.abs(spectrum) ** self.cfg.power
        mel = np.asarray(self._mel_basis @ power.astype(_DTYPE, copy=False).T).T
        log_mel: F32 = np.log10(np.maximum(mel, EPS)).astype(_DTYPE, copy=False)
        log_mel *= self._gain
        if self._offset is not None:
            log_mel += self._offset
        return log_mel


def _band_statistics(
    cfg: LogMelConfig, mean: npt.ArrayLike | None, std: npt.ArrayLike | None
) -> tuple[F32 | None, F32 | None]:
    """Validated (band_mean, band_std) in float32, or (None, None) without band scaling."""
    if cfg.band_scaling == "none":
        return None, None
    if mean is None or std is None:
        raise ValueError("band_scaling 'standard' needs band_mean and band_std (see LogMelExtractor.fit)")
    m, s = np.asarray(mean, dtype=_DTYPE), np.asarray(std, dtype=_DTYPE)
    if m.shape != (cfg.n_mels,) or s.shape != (cfg.n_mels,):
        raise ValueError(f"band_mean and band_std must hold n_mels = {cfg.n_mels} values, got {m.shape}, {s.shape}")
    if not (np.isfinite(m).all() and np.isfinite(s).all()):
        raise ValueError("band_mean and band_std must be finite")
    # A band that never moved in training (a steady tone, digital silence) still gets a usable unit.
    return m, np.maximum(s, MIN_BAND_STD_DB).astype(_DTYPE)


class LogMelStream:
    """Incremental log-mel state of one stream.

    Sample buffer positions are counted in the padded signal (sample index + n_fft // 2); frame t covers padded
    samples [t * hop, t * hop + n_fft). 'reflect' padding needs the first n_fft // 2 + 1 samples, so nothing is
    emitted before they arrive.
    """

    def __init__(self, extractor: LogMelExtractor) -> None:
        self._ex = extractor
        cfg = extractor.cfg
        self._n_fft, self._hop, self._frames = cfg.n_fft, cfg.hop_length, cfg.frames
        self._pad = cfg.n_fft // 2
        self._reset()

    def _reset(self) -> None:
        self._n = 0  # samples pushed
        self._started = False  # start padding prepended
        self._buf = np.zeros(0, dtype=_DTYPE)
        self._buf_start = self._pad  # padded position of _buf[0]
        self._next_frame = 0
        self._mels = np.zeros((0, self._ex.cfg.n_mels), dtype=_DTYPE)  # last frames, for stacking
        self._mels_start = 0  # frame index of _mels[0]

    def push(self, samples: np.ndarray) -> Vectors:
        return self._stack(self.push_frames(samples))

    def flush(self) -> Vectors:
        vectors = self._stack(self.flush_frames(reset=False))
        self._reset()
        return vectors

    def push_frames(self, samples: np.ndarray) -> F32:
        """Consume samples; return the log-mel frames (T, n_mels) now complete, unstacked (`push` stacks them)."""
        x = np.asarray(samples, dtype=_DTYPE)
        if x.ndim != 1:
            raise DataError(f"log-mel features take mono samples of shape (n,), got {x.shape}; see prepare_audio")
        self._n += len(x)
        self._buf = np.concatenate([self._buf, x])
        if not self._started and (self._ex.cfg.pad_mode == "constant" or self._n > self._pad):
            self._start(self._start_padding())
        return self._emit() if self._started else self._no_frames()

    def flush_frames(self, *, reset: bool = True) -> F32:
        """End of stream: the frames that need the end padding; then (with `reset`) start afresh."""
        if self._n == 0:
            frames = self._no_frames()
        elif not self._started:
            # Too short to reflect once (reflect mode): pad the whole signal as numpy and librosa do.
            self._buf, self._buf_start = np.pad(self._buf, self._pad, mode="reflect"), 0
            frames = self._emit()
        else:
            self._buf = np.concatenate([self._buf, self._end_padding()])
            frames = self._emit()
        if reset:
            self._reset()
        return frames

    def _start(self, head: np.ndarray) -> None:
        self._buf = np.concatenate([head, self._buf])
        self._buf_start = 0
        self._started = True

    def _start_padding(self) -> np.ndarray:
        if self._ex.cfg.pad_mode == "constant":
            return np.zeros(self._pad, dtype=_DTYPE)
        return self._buf[1 : self._pad + 1][::-1]

    def _end_padding(self) -> np.ndarray:
        if self._ex.cfg.pad_mode == "constant":
            return np.zeros(self._pad, dtype=_DTYPE)
        # _emit keeps at least the last pad + 1 samples, which are signal samples once started.
        return self._buf[len(self._buf) - self._pad - 1 : len(self._buf) - 1][::-1]

    def _emit(self) -> F32:
        buf_end = self._buf_start + len(self._buf)
        end_frame = max(self._next_frame, (buf_end - self._n_fft) // self._hop + 1)
        offset = self._next_frame * self._hop - self._buf_start
        count = end_frame - self._next_frame
        if count == 0:
            return self._no_frames()
        frames = np.lib.stride_tricks.sliding_window_view(self._buf[offset:], self._n_fft)[:: self._hop][:count]
        new = self._ex.log_mel(frames)
        self._next_frame = end_frame
        keep_from = max(self._buf_start, min(end_frame * self._hop, buf_end - self._pad - 1))
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return new

    def _stack(self, new: np.ndarray) -> Vectors:
        mels = np.concatenate([self._mels, new]) if len(new) else self._mels
        first_frame = self._mels_start
        keep = min(len(mels), self._frames - 1)
        self._mels, self._mels_start = mels[len(mels) - keep :], first_frame + len(mels) - keep
        if len(mels) < self._frames:
            return self._empty()
        stacked = np.lib.stride_tricks.sliding_window_view(mels, self._frames, axis=0)
        # sliding_window_view puts the window axis last: (vectors, n_mels, frames) -> frame-major rows. Always a copy:
        # one vector's transposed view is already contiguous, and the read-only view would reach torch (a warning).
        data = np.array(stacked.transpose(0, 2, 1), order="C").reshape(len(stacked), -1)
        return Vectors(data, *self._sample_ranges(first_frame, len(stacked)))

    def _sample_ranges(self, first_frame: int, count: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        starts = (first_frame + np.arange(count, dtype=np.int64)) * self._hop - self._pad
        ends = starts + (self._frames - 1) * self._hop + self._n_fft
        return np.clip(starts, 0, self._n), np.clip(ends, 0, self._n)

    def _empty(self) -> Vectors:
        return Vectors.empty(self._frames * self._ex.cfg.n_mels)

    def _no_frames(self) -> F32:
        return np.zeros((0, self._ex.cfg.n_mels), dtype=_DTYPE)
