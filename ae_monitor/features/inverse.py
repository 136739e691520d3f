"""Stage 3 in reverse: feature vectors (inputs or reconstructions) back to signals, as far as the features allow.

- **Sensor windows** invert exactly up to the overlap: each window is un-scaled (`raw = scaled * scale + offset`,
  the fitted statistics) and every sample becomes the mean of the windows that cover it. Samples no window covers
  (a trailing partial window) are NaN. Windows of first differences (`differences = true`) are refused: they lost
  each window's level, so no signal can be rebuilt from them alone.
- **Log-mel vectors** invert only approximately. The 5 stacked frames of overlapping vectors are averaged per frame
  back into a (frames, n_mels) log-mel image (exact for input vectors); the dB values become mel power; librosa's
  `mel_to_stft` finds a non-negative STFT magnitude whose mel projection matches it (128 mel bands cannot hold the
  detail of 513 FFT bins); Griffin-Lim then estimates a phase. With a reference signal (denoising) the phase starts
  from the reference's STFT, which sounds much closer than a random start.

    >>> import numpy as np
    >>> frames = np.arange(8, dtype=np.float32).reshape(4, 2)  # 4 frames of 2 mel bands
    >>> stacked = np.stack([frames[0:3].ravel(), frames[1:4].ravel()])  # 2 vectors of 3 stacked frames
    >>> overlap_add_frames(stacked, frames=3).tolist()
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
"""

from __future__ import annotations

from typing import Any

import librosa
import numpy as np
import numpy.typing as npt

from ae_monitor.config import LogMelConfig
from ae_monitor.features.sensor import SensorExtractor

__all__ = ["logmel_to_audio", "overlap_add_frames", "overlap_add_windows"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def overlap_add_windows(
    windows: npt.NDArray[np.floating],
    first_sample: npt.NDArray[np.int64],
    n_samples: int,
    extractor: SensorExtractor,
) -> F64:
    """Raw-unit samples (n_samples, channels) from scaled sensor windows (N, window_samples * channels).

    Window i covers samples [first_sample[i], first_sample[i] + window_samples); a sample is the mean of every
    window covering it, NaN where none does.
    """
    if extractor.cfg.differences:
        raise ValueError(
            "windows of first differences (features.sensor.differences = true) cannot be turned back into samples"
        )
    steps, channels = extractor.vector_shape
    total = np.zeros((n_samples, channels))
    count = np.zeros(n_samples)
    rows = first_sample[:, None] + np.arange(steps)[None, :]  # (N, steps) sample index of every window row
    inside = rows < n_samples
    np.add.at(total, rows[inside], windows.reshape(-1, steps, channels)[inside])
    np.add.at(count, rows[inside], 1.0)
    offset, scale, _ = extractor.scaling_arrays()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count[:, None]  # 0 / 0 = NaN marks samples no window covers
    result: F64 = mean * scale + offset
    return result


def overlap_add_frames(vectors: npt.NDArray[np.floating], *, frames: int) -> F32:
    """The (N + frames - 1, n_mels) log-mel image of N stacked vectors that slide by one frame (frame-major rows).

    Frame t is the mean of its copies in vectors t - frames + 1 .. t.
    """
    n = len(vectors)
    stacked = np.asarray(vectors, dtype=np.float64).reshape(n, frames, -1)
    total = np.zeros((n + frames - 1, stacked.shape[2]))
    count = np.zeros(n + frames - 1)
    for k in range(frames):  # frames is small (5): one vectorised add per position in the stack
        total[k : k + n] += stacked[:, k]
        count[k : k + n] += 1
    mean: npt.NDArray[np.float32] = (total / np.maximum(count, 1)[:, None]).astype(np.float32)
    return mean


def logmel_to_audio(
    log_mel: npt.NDArray[np.floating],
    cfg: LogMelConfig,
    *,
    length: int,
    reference: npt.NDArray[np.floating] | None = None,
    n_iter: int = 32,
    seed: int = 0,
) -> F32:
    """Approximate mono audio of `length` samples whose log-mel image (frames, n_mels) in dB is `log_mel`.

    `reference` (audio of the same length, e.g. the noisy input being denoised) supplies the starting phase of
    Griffin-Lim; without it the phase starts at random (seeded by `seed`).
    """
    power = np.power(10.0, np.asarray(log_mel, dtype=np.float64).T / 10.0)  # (n_mels, frames), undoes 10*log10
    magnitude = librosa.feature.inverse.mel_to_stft(
        power, sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, power=cfg.power, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz
    )
    stft_args: dict[str, Any] = {"hop_length": cfg.hop_length, "n_fft": cfg.n_fft, "window": "hann", "center": True}
    if reference is None:
        start, init = magnitude, "random"
    else:
        phase = np.angle(librosa.stft(np.asarray(reference, dtype=np.float32), pad_mode=cfg.pad_mode, **stft_args))
        start, init = magnitude * np.exp(1j * phase[:, : magnitude.shape[1]]), None
    audio = librosa.griffinlim(
        start, n_iter=n_iter, length=length, pad_mode=cfg.pad_mode, init=init, random_state=seed, **stft_args
    )
    return np.asarray(audio, dtype=np.float32)
