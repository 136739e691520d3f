"""`ae-monitor denoise`: clean signals with a bundle trained as a denoising autoencoder, and measure the gain.

A denoising bundle (`training.denoising = "gaussian"` or `"masking"`, noise level `training.noise_level`, both in
its manifest) learned to rebuild clean windows from corrupted ones. Cleaning runs every window of the input
through the model and turns the reconstructions back into a signal (see ae_monitor.features.inverse):
- sensors: a CSV in raw units, each sample the mean of the reconstructed windows that cover it;
- audio: a WAV through the approximate log-mel inversion, Griffin-Lim starting from the input's phase.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ae_monitor.errors import BundleError
from ae_monitor.jobs.codec import (
    feature_vectors,
    reconstruct_array,
    vectors_to_audio,
    windows_to_samples,
    write_sensor_csv,
    write_wav,
)
from ae_monitor.jobs.data import Signal, load_signals
from ae_monitor.jobs.reconstruction import DenoisingGain, denoising_gain
from ae_monitor.model.bundle import Bundle

log = logging.getLogger(__name__)


def require_denoising(bundle: Bundle) -> None:
    """BundleError unless `bundle` was trained to denoise."""
    if bundle.training.denoising == "none":
        raise BundleError(
            f"bundle {bundle.name} was not trained to denoise; train one with training.denoising = "
            '"gaussian" (or "masking") and a training.noise_level',
            field="training.denoising",
        )


def denoise_files(bundle: Bundle, source: str | Path, out: str | Path) -> list[Path]:
    """Clean every file under `source` into the folder `out`; for one input file, `out` may name the output file
    (it has a suffix and is no folder)."""
    require_denoising(bundle)
    signals = load_signals([source], bundle.features)
    suffix = ".csv" if bundle.features.kind == "sensor" else ".wav"
    single = len(signals) == 1 and Path(source).is_file() and bool(Path(out).suffix) and not Path(out).is_dir()
    targets = [Path(out) if single else Path(out) / f"{s.name}{suffix}" for s in signals]
    return [denoise_signal(bundle, s, target) for s, target in zip(signals, targets, strict=True)]


def denoise_signal(bundle: Bundle, signal: Signal, path: Path) -> Path:
    vectors = feature_vectors(bundle, signal)
    cleaned = reconstruct_array(bundle, vectors.data)
    n = len(signal.samples)
    log.info("denoising %s: %d windows", signal.name, len(vectors))
    if bundle.features.kind == "sensor":
        values = windows_to_samples(bundle, cleaned, vectors.first_sample, n)
        return write_sensor_csv(path, signal.ts_s, values, bundle.extractor.group_names)
    audio = vectors_to_audio(bundle, cleaned, n, reference=signal.samples)
    return write_wav(path, audio, bundle.features.logmel.sample_rate_hz)


def measure_gain(
    bundle: Bundle, source: str | Path, *, snr_db: float, seed: int = 0, rows: slice | None = None
) -> DenoisingGain:
    """The PSNR/SSIM gain of `bundle` on the clean normal data under `source` corrupted at `snr_db`."""
    return denoising_gain(bundle, load_signals([source], bundle.features, rows=rows), snr_db=snr_db, seed=seed)
