"""A linear monitor beside the autoencoder: PCA's Hotelling T² and residual Q over a sensor window's newest steps.

The classic multivariate process monitor (PCA T²+Q) catches what a small nonlinear autoencoder reconstructs too
loosely to notice: a mean offset on one of thirty tightly correlated channels, a broken correlation between two of
forty. Fitted on the same normal feature rows the network was trained on (each time step of a feature vector is one
row of G channels), it yields per vector the mean over the scored steps of

- T², the squared distance inside the `components`-dimensional principal subspace, in units of each component's
  variance (an unusual combination of the usual directions), and
- Q, the squared residual outside that subspace (a relation between channels that normal data never broke),

each divided by its calibration scale (a high quantile of the same term on normal data), so that they join the
"max" aggregation as two more terms on the channels' scale: 1.0 = as unusual as the calibration's quantile.

    >>> rng = np.random.default_rng(0)
    >>> shared = rng.normal(size=(500, 1))
    >>> rows = np.hstack([shared, shared, shared]) + 0.05 * rng.normal(size=(500, 3))
    >>> monitor = LinearMonitor.fit(rows, components=1)
    >>> t2, q = monitor.terms(np.array([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0]]))
    >>> bool(q[1] > 100 * q[0])
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
TERMS = ("t2", "q")
_TINY = 1e-12


@dataclass(frozen=True)
class LinearMonitor:
    """PCA T² and Q of feature rows (G channels), with per-term calibration scales once calibrated."""

    mean: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]  # (k, G) orthonormal principal directions
    variances: tuple[float, ...]  # (k,) variance along each direction on the fitted rows
    terms_used: tuple[str, ...] = TERMS
    scales: tuple[float, ...] = ()  # one per term in `terms_used`; empty until calibrated

    def __post_init__(self) -> None:
        g = len(self.mean)
        if g < 2:
            raise ValueError(f"a linear monitor needs at least 2 channels, got {g}")
        if not self.components or any(len(row) != g for row in self.components):
            raise ValueError(f"components must be k rows of {g} values")
        if len(self.variances) != len(self.components) or not all(v > 0 for v in self.variances):
            raise ValueError("variances must be one positive value per component")
        if not self.terms_used or any(t not in TERMS for t in self.terms_used):
            raise ValueError(f"terms must be a non-empty subset of {TERMS}, got {self.terms_used}")
        if self.scales and (len(self.scales) != len(self.terms_used) or not all(s > 0 for s in self.scales)):
            raise ValueError("scales must be one positive value per term")
        values = [*self.mean, *self.variances, *self.scales, *(v for row in self.components for v in row)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("the linear monitor holds a non-finite value")

    @staticmethod
    def fit(rows: npt.ArrayLike, *, components: int, terms: Sequence[str] = TERMS) -> LinearMonitor:
        """Principal directions of `rows` (n, G): at most G - 1 of them, so that Q always has a residual to see."""
        x = np.asarray(rows, dtype=np.float64)
        mean = x.mean(axis=0)
        # The covariance's eigenvectors are the principal directions; G is small (channels), n may be large.
        variances, vectors = np.linalg.eigh(np.cov(x - mean, rowvar=False))
        k = max(1, min(components, x.shape[1] - 1))
        order = np.argsort(variances)[::-1][:k]
        floor = max(float(variances.max()), _TINY) * 1e-9
        return LinearMonitor(
            mean=tuple(float(v) for v in mean),
            components=tuple(tuple(float(v) for v in vectors[:, i]) for i in order),
            variances=tuple(float(max(variances[i], floor)) for i in order),
            terms_used=tuple(terms),
        )

    def terms(self, rows: npt.ArrayLike) -> tuple[F64, F64]:
        """T² and Q of each row of `rows` (n, G)."""
        z = np.asarray(rows, dtype=np.float64) - np.asarray(self.mean)
        basis = np.asarray(self.components)  # (k, G)
        codes = z @ basis.T
        t2 = (codes**2 / np.asarray(self.variances)).sum(axis=1)
        q = ((z - codes @ basis) ** 2).sum(axis=1)
        return t2, q

    def vector_terms(self, data: npt.ArrayLike, steps: tuple[int, int], first_step: int) -> F64:
        """Per vector of `data` (N, T*G), each used term's mean over steps [first_step, T): shape (N, terms)."""
        t, g = steps
        x = np.asarray(data, dtype=np.float64).reshape(-1, t, g)[:, first_step:, :]
        n, s = x.shape[0], x.shape[1]
        t2, q = self.terms(x.reshape(n * s, g))
        found = {"t2": t2, "q": q}
        return np.stack([found[name].reshape(n, s).mean(axis=1) for name in self.terms_used], axis=1)

    def channel_terms(self, data: npt.ArrayLike, steps: tuple[int, int], first_step: int, terms: F64) -> F64:
        """Per vector of `data` (N, T*G) and channel, that channel's part of the vector's largest used term over its
        scale, averaged over steps [first_step, T); clipped at 0. `terms`: the vectors' `vector_terms` (the caller
        has them already). T²'s parts are z_j * sum_k p_kj t_k / λ_k (they add up to T²), Q's the squared residual
        of each channel (they add up to Q): which channels an alert should name.
        """
        t, g = steps
        x = np.asarray(data, dtype=np.float64).reshape(-1, t, g)[:, first_step:, :]
        n, s = x.shape[0], x.shape[1]
        z = x.reshape(n * s, g) - np.asarray(self.mean)
        basis = np.asarray(self.components)
        codes = z @ basis.T
        chosen = np.asarray(self.terms_used)[(terms / np.asarray(self.scales)).argmax(axis=1)]
        out = np.zeros((n, g))
        for name in self.terms_used:
            rows = chosen == name
            if rows.any():
                part = z * ((codes / np.asarray(self.variances)) @ basis) if name == "t2" else (z - codes @ basis) ** 2
                out[rows] = part.reshape(n, s, g)[rows].mean(axis=1)
        return np.clip(out, 0.0, None)

    def calibrated(self, per_vector: F64, *, quantile: float) -> LinearMonitor:
        """This monitor with each term's scale: its `quantile` on normal vectors (floored like the group scales)."""
        raw = np.quantile(per_vector, quantile, axis=0) if len(per_vector) else np.ones(len(self.terms_used))
        return replace(self, scales=tuple(float(max(v, _TINY)) for v in raw))

    def score(self, data: npt.ArrayLike, steps: tuple[int, int], first_step: int) -> F64:
        """Per vector, the largest used term divided by its scale (needs a calibrated monitor)."""
        return self.scaled_max(self.vector_terms(data, steps, first_step))

    def scaled_max(self, terms: F64) -> F64:
        """Per row of `terms` (N, terms, as `vector_terms` gives them), the largest term over its scale."""
        if not self.scales:
            raise ValueError("the linear monitor is not calibrated (no scales)")
        return np.asarray((terms / np.asarray(self.scales)).max(axis=1), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "components": [list(row) for row in self.components],
            "variances": list(self.variances),
            "terms": list(self.terms_used),
            "scales": list(self.scales),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> LinearMonitor:
        return LinearMonitor(
            mean=tuple(float(v) for v in d["mean"]),
            components=tuple(tuple(float(v) for v in row) for row in d["components"]),
            variances=tuple(float(v) for v in d["variances"]),
            terms_used=tuple(str(t) for t in d["terms"]),
            scales=tuple(float(v) for v in d["scales"]),
        )
