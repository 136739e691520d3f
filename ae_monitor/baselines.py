"""Reference detectors the benchmark measures ae_monitor against, on the same splits and at their own thresholds.

Both are fitted on a series' normal training rows only, score every test row causally (a row's score uses that
row and earlier rows), and flag rows whose score exceeds a limit taken from the training rows alone:

- `RollingZScore`: per channel, |x - mean| / std of the previous `history` rows; the row's score is the maximum
  over channels. Its limit is the `quantile` of the same score over the training rows.
- `PcaT2Q`: standardised on the training rows, `components` principal components; the monitoring index is
  Hotelling's T² (in the components, scaled by their variances) plus Q (the squared residual), each divided by its
  own training mean so that neither term dominates; the limit is the `quantile` of that index on the training rows.

    >>> rng = np.random.default_rng(0)
    >>> train, test = rng.normal(size=(500, 3)), rng.normal(size=(200, 3))
    >>> test[150, 1] = 12.0
    >>> z = RollingZScore().fit(train)
    >>> bool(z.predict(test)[150]), int(z.predict(test)[:140].sum()) < 10
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sklearn.decomposition import PCA

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
_MIN_HISTORY = 10  # rows before a rolling z-score is defined at the start of a series
_TINY = 1e-12


def rolling_z(values: npt.ArrayLike, *, history: int = 100) -> F64:
    """Per row, max over channels of |x - mean| / std of up to `history` previous rows (NaN before 10 rows)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n = len(x)
    c1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    c2 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x * x, axis=0)])
    rows = np.arange(n)
    lo = np.maximum(rows - history, 0)
    count = (rows - lo)[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (c1[rows] - c1[lo]) / count
        var = np.maximum((c2[rows] - c2[lo]) / count - mean * mean, 0.0)
        # A flat history makes every change infinitely surprising; a small floor relative to the level keeps it finite.
        std = np.sqrt(var) + _TINY + 1e-6 * np.abs(mean)
        z = np.abs(x - mean) / std
    score: F64 = np.max(z, axis=1)
    score[rows < _MIN_HISTORY] = np.nan
    return score


@dataclass
class RollingZScore:
    """Causal rolling z-score over the previous `history` rows, max over channels, limit from the training rows."""

    history: int = 100
    quantile: float = 0.99
    limit: float = field(default=np.inf, init=False)

    def fit(self, train: npt.ArrayLike) -> RollingZScore:
        scores = rolling_z(train, history=self.history)
        self.limit = float(np.nanquantile(scores, self.quantile))
        return self

    def score(self, test: npt.ArrayLike) -> F64:
        return rolling_z(test, history=self.history)

    def predict(self, test: npt.ArrayLike) -> I64:
        s = self.score(test)
        return np.where(np.isnan(s), 0, s > self.limit).astype(np.int64)


@dataclass
class PcaT2Q:
    """PCA monitoring with T² + Q, standardised on the training rows; limit = `quantile` of the training index."""

    components: int = 3
    quantile: float = 0.99
    limit: float = field(default=np.inf, init=False)
    _mean: F64 = field(default_factory=lambda: np.zeros(0), init=False, repr=False)
    _std: F64 = field(default_factory=lambda: np.ones(0), init=False, repr=False)
    _pca: PCA | None = field(default=None, init=False, repr=False)
    _scale: tuple[float, float] = field(default=(1.0, 1.0), init=False, repr=False)

    def fit(self, train: npt.ArrayLike) -> PcaT2Q:
        x = _two_d(train)
        self._mean, std = x.mean(axis=0), x.std(axis=0)
        self._std = np.where(std > _TINY, std, 1.0)
        z = (x - self._mean) / self._std
        self._pca = PCA(n_components=max(1, min(self.components, x.shape[1] - 1 or 1, len(x) - 1))).fit(z)
        t2, q = self._terms(z)
        self._scale = (max(float(t2.mean()), _TINY), max(float(q.mean()), _TINY))
        self.limit = float(np.quantile(self._index(t2, q), self.quantile))
        return self

    def _terms(self, z: F64) -> tuple[F64, F64]:
        assert self._pca is not None, "fit first"
        codes = self._pca.transform(z)
        t2 = (codes**2 / np.maximum(self._pca.explained_variance_, _TINY)).sum(axis=1)
        q = ((z - self._pca.inverse_transform(codes)) ** 2).sum(axis=1)
        return np.asarray(t2, dtype=np.float64), np.asarray(q, dtype=np.float64)

    def _index(self, t2: F64, q: F64) -> F64:
        return t2 / self._scale[0] + q / self._scale[1]

    def score(self, test: npt.ArrayLike) -> F64:
        return self._index(*self._terms((_two_d(test) - self._mean) / self._std))

    def predict(self, test: npt.ArrayLike) -> I64:
        return (self.score(test) > self.limit).astype(np.int64)


def _two_d(values: npt.ArrayLike) -> F64:
    x = np.asarray(values, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x
