"""Stage 5, score: the band statistic of a window, and how it joins the autoencoder's error into one window score.

The autoencoder scores each vector (5 frames, 160 ms of audio) on its own, and a window's error is the mean of its
vectors' errors. That mean cannot see what is *missing* over the window: a valve actuation that does not come leaves
only normal-looking vectors. A window-level statistic can: per feature group (mel band), the window's mean feature
value, standardised by the mean and standard deviation of that value over the normal calibration windows; the
statistic is the mean over groups of the squared z-score (the `zscore` baseline of docs/audio.md).

With `calibration.window_statistic = "band_mean_z"` a window scores

    max(error / error_scale, statistic / statistic_scale)

where `error_scale` is the `window_statistic_quantile` of the normal windows' errors and `statistic_scale` is
`window_statistic_margin` times that quantile of their statistic: the autoencoder decides, unless the bands' levels
are well beyond anything normal. Both scales come from the same normal windows as the threshold. Where the
statistic decides a window's score, the window's shares (an alert's top contributors) are the bands' squared
z-scores (`band_terms`), so the alert names the bands whose level moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

KIND = "band_mean_z"
# A band whose mean hardly moves over normal windows (a silent band, a constant channel) would turn rounding noise
# into huge z-scores: its standard deviation is floored at this many feature units (the baseline's 1e-3 dB).
MIN_BAND_STD = 1e-3
# A scale of zero (a perfectly reconstructed calibration set) would divide by zero.
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class BandMeanZ:
    """The fitted band statistic and the two scales that put it and the error on one footing (see the module)."""

    band_mean: tuple[float, ...]
    band_std: tuple[float, ...]
    error_scale: float
    statistic_scale: float
    # The two tuples as arrays, made once: a live window is scored every half second per stream.
    _mean: F64 = field(init=False, repr=False, compare=False)
    _std: F64 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.band_mean) != len(self.band_std) or not self.band_mean:
            raise ValueError(f"band_mean and band_std need one value per group, got {len(self.band_mean)} and "
                             f"{len(self.band_std)}")  # fmt: skip
        if not all(math.isfinite(v) for v in self.band_mean):
            raise ValueError("band_mean must be finite")
        for name, values in (("band_std", self.band_std), ("scales", (self.error_scale, self.statistic_scale))):
            if not all(math.isfinite(v) and v > 0 for v in values):
                raise ValueError(f"{name} must hold finite positive values")
        object.__setattr__(self, "_mean", np.asarray(self.band_mean, dtype=np.float64))
        object.__setattr__(self, "_std", np.asarray(self.band_std, dtype=np.float64))

    def statistic(self, band_means: npt.ArrayLike) -> F64:
        """Mean over groups of the squared z-score of each group's window mean; `band_means` is (..., G).

        >>> BandMeanZ((0.0, 1.0), (1.0, 2.0), 1.0, 1.0).statistic([[2.0, 1.0], [0.0, 5.0]])
        array([2., 2.])
        """
        return np.asarray(self.band_terms(band_means).mean(axis=-1), dtype=np.float64)

    def band_terms(self, band_means: npt.ArrayLike) -> F64:
        """Each group's squared z-score (..., G), whose mean is the statistic: what each band contributed.

        >>> BandMeanZ((0.0, 1.0), (1.0, 2.0), 1.0, 1.0).band_terms([2.0, 1.0])
        array([4., 0.])
        """
        z = (np.asarray(band_means, dtype=np.float64) - self._mean) / self._std
        return np.asarray(np.square(z), dtype=np.float64)

    def score(self, error: float, band_means: npt.ArrayLike) -> float:
        """One window's score from its mean error and its groups' mean feature values (G,).

        >>> BandMeanZ((0.0, 0.0), (1.0, 1.0), 2.0, 4.0).score(1.0, [4.0, 0.0])
        2.0
        """
        return max(error / self.error_scale, float(self.statistic(band_means)) / self.statistic_scale)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the bundle manifest (inside the calibration record)."""
        return {"kind": KIND, "band_mean": list(self.band_mean), "band_std": list(self.band_std),
                "error_scale": self.error_scale, "statistic_scale": self.statistic_scale}  # fmt: skip

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> BandMeanZ:
        """Inverse of `to_dict`; ValueError (or KeyError) on anything else."""
        if d.get("kind") != KIND:
            raise ValueError(f"unknown window statistic {d.get('kind')!r}; this version knows {KIND!r}")
        return BandMeanZ(
            band_mean=tuple(float(v) for v in d["band_mean"]),
            band_std=tuple(float(v) for v in d["band_std"]),
            error_scale=float(d["error_scale"]),
            statistic_scale=float(d["statistic_scale"]),
        )


def band_means_of(data: npt.NDArray[np.floating], vector_shape: tuple[int, int]) -> F64:
    """Each vector's mean over its time steps, per group: (N, T*G) -> (N, G).

    >>> band_means_of(np.array([[1.0, 2.0, 3.0, 6.0]]), (2, 2))
    array([[2., 4.]])
    """
    steps, groups = vector_shape
    # Summed in the data's own precision (float32 features: a third of the time of a float64 mean; each vector's sum
    # is the same whichever chunk it arrived in), then averaged in float64.
    return np.asarray(np.reshape(data, (-1, steps, groups)).sum(axis=1), dtype=np.float64) / steps


def running_means(values: npt.ArrayLike, size: int) -> F64:
    """Means of every run of `size` consecutive rows (a window at every vector); fewer rows than `size` give one
    mean over all of them, as `scoring.aggregate` makes one window of a short sequence.

    >>> running_means([[1.0], [3.0], [5.0]], 2)
    array([[2.],
           [4.]])
    """
    rows = np.asarray(values, dtype=np.float64)
    if len(rows) <= size:
        return np.asarray(rows.mean(axis=0, keepdims=True), dtype=np.float64)
    cum = np.concatenate([np.zeros((1, *rows.shape[1:])), np.cumsum(rows, axis=0)])
    return np.asarray((cum[size:] - cum[:-size]) / size, dtype=np.float64)


def fit_band_mean_z(
    vectors: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]], *, size: int, quantile: float, margin: float
) -> BandMeanZ:
    """Fit on normal streams, each given as (vector errors (N,), vector band means (N, G)), with windows of `size`
    vectors starting at every vector (as calibration scores them)."""
    parts = [(np.asarray(e, dtype=np.float64), np.asarray(b, dtype=np.float64)) for e, b in vectors]
    parts = [(e, b) for e, b in parts if len(e)]
    if not parts:
        raise ValueError("the band statistic needs at least one scored vector of normal data")
    errors = np.concatenate([running_means(e, size) for e, _ in parts])
    bands = np.concatenate([running_means(b, size) for _, b in parts])
    fitted = BandMeanZ(
        band_mean=tuple(float(v) for v in bands.mean(axis=0)),
        band_std=tuple(float(v) for v in np.maximum(bands.std(axis=0), MIN_BAND_STD)),
        error_scale=1.0,
        statistic_scale=1.0,
    )
    error_scale = max(float(np.quantile(errors, quantile)), MIN_SCALE)
    statistic_scale = max(margin * float(np.quantile(fitted.statistic(bands), quantile)), MIN_SCALE)
    return BandMeanZ(fitted.band_mean, fitted.band_std, error_scale, statistic_scale)
