"""`ae-monitor sample`: synthetic normal windows from a variational bundle, decoded from z ~ N(0, I).

Only a VAE's decoder was trained so that codes drawn from the prior decode to plausible windows; other
autoencoders' codes follow no known distribution, so they are refused.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ae_monitor.errors import BundleError, DataError
from ae_monitor.features.sensor import SensorExtractor
from ae_monitor.jobs.codec import decode_array, write_vectors
from ae_monitor.model.bundle import Bundle

F32 = npt.NDArray[np.float32]


def sample_vectors(bundle: Bundle, n: int, *, seed: int = 0) -> F32:
    """`n` windows (n, D) in feature units decoded from codes drawn from N(0, I) with `seed`."""
    if bundle.model_config.kind != "vae":
        raise BundleError(
            f"bundle {bundle.name} is a {bundle.model_config.kind!r} autoencoder; only variational bundles "
            '(model.kind = "vae") can sample windows',
            field="model.kind",
        )
    if n <= 0:
        raise DataError(f"the number of samples must be positive, got {n}")
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn((n, bundle.model_config.latent_dim), generator=generator)
    return decode_array(bundle, codes.numpy())


def write_samples(bundle: Bundle, vectors: F32, out: str | Path) -> Path:
    """`.csv` (sensor bundles): one row per window step in raw units; anything else: a safetensors vectors file."""
    path = Path(out)
    if path.suffix.lower() != ".csv":
        return write_vectors(path, bundle, vectors, {})
    if not isinstance(bundle.extractor, SensorExtractor):
        raise DataError("only sensor bundles can write samples as CSV; use a .safetensors file for audio")
    return _write_csv(path, bundle.extractor, vectors)


def _write_csv(path: Path, extractor: SensorExtractor, vectors: F32) -> Path:
    steps, channels = extractor.vector_shape
    offset, scale, _ = extractor.scaling_arrays()
    raw = vectors.reshape(-1, steps, channels) * scale + offset  # undo the fitted scaling
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["window", "step", *extractor.channels])
        for w, window in enumerate(raw):
            writer.writerows([w, t, *(f"{v:.6g}" for v in row)] for t, row in enumerate(window))
    return path
