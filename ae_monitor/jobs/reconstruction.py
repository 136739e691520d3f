"""Reconstruction quality: MSE, PSNR and SSIM of what the model rebuilds, the denoising gain, and side-by-side plots.

What is compared, in feature units (what the model sees):
- **audio**: the clip's log-mel image (frames x mel bands, dB) against the reconstructed one, whose frames are the
  mean of their copies in the overlapping 5-frame vectors;
- **sensors**: each window (window_samples x channels, scaled units) as a 2-D array against its reconstruction.

MSE is the mean over all values. PSNR and SSIM are scikit-image's `peak_signal_noise_ratio` and
`structural_similarity`, with `data_range` = max - min of all input features of the evaluation (stated in the
report, one value for every file so that files compare). PSNR of a file is over all its values; SSIM is the mean
over its images (one per audio clip, one per sensor window) with the largest odd window (at most 7) that fits the
image; an image narrower than 3 has no SSIM (None).

The denoising gain adds white Gaussian noise at `snr_db` to clean signals (relative to each sensor channel's
variance, or to the clip's mean power), and reports PSNR/SSIM of the reconstruction of the noisy features against
the clean features minus those of the noisy features against the clean ones. Positive gains mean the model cleans.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ae_monitor.features.inverse import overlap_add_frames
from ae_monitor.jobs.codec import feature_vectors, reconstruct_array
from ae_monitor.jobs.data import ScoredSignal, Signal
from ae_monitor.model.bundle import Bundle

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
Images = list[npt.NDArray[np.floating]]
DATA_RANGE_RULE = "max - min of all input features of the evaluated files (feature units)"
_MAX_SSIM_WINDOW = 7


def psnr(reference: npt.NDArray[np.floating], test: npt.NDArray[np.floating], *, data_range: float) -> float:
    """scikit-image's PSNR in dB (inf when the arrays are equal, where the library would warn about dividing by 0)."""
    if np.array_equal(reference, test):
        return math.inf
    return float(peak_signal_noise_ratio(reference, test, data_range=data_range))  # type: ignore[no-untyped-call]


def ssim(reference: npt.NDArray[np.floating], test: npt.NDArray[np.floating], *, data_range: float) -> float | None:
    """scikit-image's SSIM of two 2-D arrays, with the largest odd window up to 7 that fits; None below 3."""
    side = min(reference.shape)
    win = min(_MAX_SSIM_WINDOW, side if side % 2 else side - 1)
    if win < 3:
        return None
    value = structural_similarity(  # type: ignore[no-untyped-call]
        np.asarray(reference, np.float64), np.asarray(test, np.float64), win_size=win, data_range=data_range
    )
    return float(value)


def images(bundle: Bundle, vectors: npt.NDArray[np.floating]) -> Images:
    """The 2-D arrays quality is measured on: one log-mel image (audio) or one array per window (sensors)."""
    if bundle.features.kind == "sensor":
        return list(np.asarray(vectors).reshape(-1, *bundle.extractor.vector_shape))
    if not len(vectors):
        return []
    from ae_monitor.features.logmel import LogMelExtractor  # librosa stays out of sensor-only processes

    image = overlap_add_frames(vectors, frames=bundle.features.logmel.frames)
    # Band-scaled bundles: images in dB again, so quality figures mean the same for every audio bundle.
    return [bundle.extractor.to_db(image) if isinstance(bundle.extractor, LogMelExtractor) else image]


def quality(reference: Images, test: Images, *, data_range: float) -> dict[str, Any]:
    """MSE, PSNR and mean SSIM of paired images; None where there is nothing to compare."""
    if not reference:
        return {"mse": None, "psnr_db": None, "ssim": None, "images": 0}
    ref, out = np.concatenate([r.ravel() for r in reference]), np.concatenate([t.ravel() for t in test])
    ssims = [
        s for s in (ssim(r, t, data_range=data_range) for r, t in zip(reference, test, strict=True)) if s is not None
    ]
    return {
        "mse": float(np.mean(np.square(ref.astype(np.float64) - out))),
        "psnr_db": psnr(ref, out, data_range=data_range),
        "ssim": float(np.mean(ssims)) if ssims else None,
        "images": len(reference),
    }


def _data_range(arrays: Sequence[npt.NDArray[np.floating]]) -> float:
    values = [a for a in arrays if a.size]
    if not values:
        return 1.0
    span = float(max(a.max() for a in values) - min(a.min() for a in values))
    return span if span > 0 else 1.0


def reconstruction_metrics(bundle: Bundle, scored: Sequence[ScoredSignal]) -> dict[str, Any]:
    """Per-file and overall reconstruction quality of already-scored signals."""
    data_range = _data_range([s.vectors.data for s in scored])
    pairs = {s.signal.name: _image_pair(bundle, s.vectors.data) for s in scored}
    files = {name: quality(ref, test, data_range=data_range) for name, (ref, test) in pairs.items()}
    every_ref = [image for ref, _ in pairs.values() for image in ref]
    every_test = [image for _, test in pairs.values() for image in test]
    return {
        "data_range": data_range,
        "data_range_rule": DATA_RANGE_RULE,
        "compared": "log-mel image per clip" if bundle.features.kind == "logmel" else "each window as a 2-D array",
        "overall": quality(every_ref, every_test, data_range=data_range),
        "files": files,
    }


def add_reconstruction_metrics(report: dict[str, Any], bundle: Bundle, scored: Sequence[ScoredSignal]) -> None:
    """Put the reconstruction metrics into an evaluation report: `reconstruction` overall, and per file."""
    metrics = reconstruction_metrics(bundle, scored)
    for name, values in metrics.pop("files").items():
        report["files"].setdefault(name, {})["reconstruction"] = values
    report["reconstruction"] = metrics


def _image_pair(bundle: Bundle, vectors: npt.NDArray[np.floating]) -> tuple[Images, Images]:
    return images(bundle, vectors), images(bundle, reconstruct_array(bundle, vectors))


# --- denoising gain ---------------------------------------------------------------------------------------------


def add_noise(signal: Signal, *, snr_db: float, rng: np.random.Generator) -> Signal:
    """`signal` plus white Gaussian noise at `snr_db`: per sensor channel relative to its variance; audio relative
    to the clip's mean power."""
    clean = np.asarray(signal.samples, dtype=np.float64)
    power = np.nanvar(clean, axis=0) if clean.ndim == 2 else np.mean(np.square(clean))
    sigma = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    noisy = clean + rng.normal(size=clean.shape) * sigma
    return Signal(signal.name, noisy.astype(signal.samples.dtype), signal.ts_s, signal.channels)


@dataclass(frozen=True)
class DenoisingGain:
    """Quality of the noisy and of the denoised features against the clean ones, and the difference."""

    snr_db: float
    data_range: float
    noisy: dict[str, Any]
    denoised: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "snr_db": self.snr_db,
            "noise": "white Gaussian; sensors: per channel relative to its variance; audio: to the clip's power",
            "data_range": self.data_range,
            "data_range_rule": "max - min of the clean input features",
            "noisy_vs_clean": self.noisy,
            "denoised_vs_clean": self.denoised,
            "gain": {"psnr_db": self.psnr_gain_db, "ssim": self.ssim_gain},
        }

    @property
    def psnr_gain_db(self) -> float:
        return float(self.denoised["psnr_db"] - self.noisy["psnr_db"])

    @property
    def ssim_gain(self) -> float | None:
        if self.denoised["ssim"] is None or self.noisy["ssim"] is None:
            return None
        return float(self.denoised["ssim"] - self.noisy["ssim"])


def denoising_gain(bundle: Bundle, signals: Sequence[Signal], *, snr_db: float, seed: int = 0) -> DenoisingGain:
    """Measure how much `bundle` cleans `signals` (held-back normal data) corrupted at `snr_db`."""
    rng = np.random.default_rng(seed)
    clean = [feature_vectors(bundle, s).data for s in signals]
    noisy = [feature_vectors(bundle, add_noise(s, snr_db=snr_db, rng=rng)).data for s in signals]
    data_range = _data_range(clean)
    ref = [image for c in clean for image in images(bundle, c)]
    noisy_images = [image for n in noisy for image in images(bundle, n)]
    denoised = [image for n in noisy for image in images(bundle, reconstruct_array(bundle, n))]
    return DenoisingGain(
        snr_db=snr_db,
        data_range=data_range,
        noisy=quality(ref, noisy_images, data_range=data_range),
        denoised=quality(ref, denoised, data_range=data_range),
    )


# --- plots ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pick:
    """One thing to draw: a whole clip (audio) or one window (sensors) of a scored signal."""

    scored: ScoredSignal
    rows: slice  # vectors of the signal
    label: int
    score: float


def reconstruction_plots(
    out: Path, bundle: Bundle, scored: Sequence[ScoredSignal], *, per_label: int = 3
) -> list[Path]:
    """Input, reconstruction and error side by side for `per_label` normal and anomalous windows (or clips)."""
    picks = _sensor_picks(scored, per_label) if bundle.features.kind == "sensor" else _clip_picks(scored, per_label)
    draw = _draw_sensor if bundle.features.kind == "sensor" else _draw_clip
    return [draw(out / _file_name(pick), bundle, pick) for pick in picks]


def _clip_picks(scored: Sequence[ScoredSignal], per_label: int) -> list[_Pick]:
    # Normal clips in name order; anomalous ones by score, highest first: where the model fails most.
    normal = [s for s in scored if s.signal.clip_label == 0][:per_label]
    anomalous = sorted((s for s in scored if s.signal.clip_label == 1), key=lambda s: -s.clip_score)[:per_label]
    return [_Pick(s, slice(0, len(s.vectors)), int(s.signal.clip_label or 0), s.clip_score) for s in normal + anomalous]


def _sensor_picks(scored: Sequence[ScoredSignal], per_label: int) -> list[_Pick]:
    """Normal windows (no labelled row) spread evenly; anomalous ones (end row labelled) with the highest scores."""
    normal: list[_Pick] = []
    anomalous: list[_Pick] = []
    for item in scored:
        labels = item.signal.row_labels
        for i, (first, end) in enumerate(zip(item.vectors.first_sample, item.vectors.end_sample, strict=True)):
            window_labels = labels[first:end] if labels is not None else np.zeros(1, dtype=np.int64)
            pick = _Pick(item, slice(i, i + 1), int(window_labels[-1]), float(item.scores.errors[i]))
            if window_labels[-1]:
                anomalous.append(pick)
            elif not window_labels.any():
                normal.append(pick)
    spread = np.linspace(0, len(normal) - 1, min(per_label, len(normal))).round().astype(int)
    return [normal[i] for i in spread] + _apart(sorted(anomalous, key=lambda p: -p.score), per_label)


def _apart(picks: Sequence[_Pick], count: int) -> list[_Pick]:
    """The first `count` picks that overlap no earlier chosen one: neighbouring windows look alike."""
    chosen: list[_Pick] = []
    for pick in picks:
        if len(chosen) == count:
            break
        if not any(pick.scored is c.scored and abs(pick.rows.start - c.rows.start) < _span(pick) for c in chosen):
            chosen.append(pick)
    return chosen


def _span(pick: _Pick) -> int:
    vectors = pick.scored.vectors
    return int(vectors.end_sample[0] - vectors.first_sample[0])


def _file_name(pick: _Pick) -> str:
    kind = "anomalous" if pick.label else "normal"
    stream = re.sub(r"[^A-Za-z0-9_.-]+", "_", pick.scored.signal.name)
    return f"{kind}_{stream}_{int(pick.scored.vectors.first_sample[pick.rows.start])}.png"


def _title(pick: _Pick) -> str:
    return f"{pick.scored.signal.name} ({'anomalous' if pick.label else 'normal'}), score {pick.score:.4g}"


def _draw_clip(path: Path, bundle: Bundle, pick: _Pick) -> Path:
    plt = _pyplot()
    vectors = pick.scored.vectors.data[pick.rows]
    image = images(bundle, vectors)[0]
    rebuilt = images(bundle, reconstruct_array(bundle, vectors))[0]
    cfg = bundle.features.logmel
    extent = (0.0, len(image) * cfg.hop_length / cfg.sample_rate_hz, 0.0, float(cfg.n_mels))
    low, high = float(image.min()), float(image.max())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    error = np.abs(rebuilt - image)
    panels = [
        (image, "input (dB)", "magma", low, high),
        (rebuilt, "reconstruction (dB)", "magma", low, high),
        (error, "|error| (dB)", "viridis", 0.0, float(error.max())),
    ]
    for ax, (data, name, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        shown = ax.imshow(data.T, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, extent=extent)
        fig.colorbar(shown, ax=ax)
        ax.set(title=name, xlabel="time (s)")
    axes[0].set_ylabel("mel band")
    fig.suptitle(_title(pick))
    return _save(fig, path)


def _draw_sensor(path: Path, bundle: Bundle, pick: _Pick) -> Path:
    plt = _pyplot()
    vectors = pick.scored.vectors.data[pick.rows]
    window = images(bundle, vectors)[0]
    rebuilt = images(bundle, reconstruct_array(bundle, vectors))[0]
    names = bundle.extractor.group_names
    fig, axes = plt.subplots(len(names), 3, figsize=(14, 1.3 * len(names) + 1), sharex=True, squeeze=False)
    steps = np.arange(len(window)) + int(pick.scored.vectors.first_sample[pick.rows.start])
    for row, name in enumerate(names):
        ax_in, ax_out, ax_err = axes[row]
        ax_in.plot(steps, window[:, row], color="tab:blue", lw=1)
        ax_out.plot(steps, window[:, row], color="lightgrey", lw=1)
        ax_out.plot(steps, rebuilt[:, row], color="tab:orange", lw=1)
        ax_out.sharey(ax_in)
        ax_err.plot(steps, rebuilt[:, row] - window[:, row], color="tab:red", lw=1)
        ax_err.axhline(0.0, color="grey", lw=0.5)
        ax_in.set_ylabel(name, rotation=0, ha="right", fontsize="small")
    for ax, name in zip(axes[0], ("input (scaled)", "reconstruction (grey: input)", "error"), strict=True):
        ax.set_title(name)
    for ax in axes[-1]:
        ax.set_xlabel("row")
    fig.suptitle(_title(pick))
    return _save(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
