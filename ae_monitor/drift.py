"""Score-drift watch: is a bundle's live score distribution still the one its threshold was calibrated on?

The bundle's calibration carries 101 `reference_quantiles` of its calibration scores. `DriftWatch` keeps a sliding
window of the bundle's latest live window scores and computes the Kolmogorov–Smirnov statistic between the two
(the largest gap between the live empirical CDF and the reference CDF, interpolated between its quantiles). It is
handed to `publish` (the daemon passes its `ae_monitor_score_drift_ks{bundle}` gauge). Crossing `ks_limit` starts a
drift **episode**, logged once (a warning) and handed once to whoever `take_episode`s (per-stream learning retrains
the stream's model): a stale threshold is a reason to recalibrate or retrain. The episode ends, logged once too, only
when the statistic has stayed below 80 % of the limit for a whole window of new scores, so a statistic that hovers
about the limit during a shift is one episode, not a warning at each crossing.

Anomalies also move the live distribution; a KS above the limit says "look", not "retrain now".

    >>> watch = DriftWatch(tuple(np.linspace(0.0, 1.0, 101)), bundle="pump", window_scores=100, min_scores=50,
    ...                    ks_limit=0.3)
    >>> for s in np.linspace(0.0, 1.0, 100): _ = watch.observe(float(s))
    >>> round(watch.statistic or 0.0, 2), watch.stale
    (0.01, False)
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from ae_monitor.config import DriftConfig

log = logging.getLogger(__name__)


def ks_statistic(live: Sequence[float], reference_quantiles: Sequence[float]) -> float:
    """sup |F_live(x) - F_ref(x)|, with F_ref linear between the reference quantiles (0 below, 1 above)."""
    ref = np.asarray(reference_quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, ref.size)
    values, first = np.unique(ref, return_index=True)
    x = np.sort(np.asarray(live, dtype=np.float64))
    ref_cdf = np.interp(x, values, levels[first], left=0.0, right=1.0)
    # The live CDF jumps at each sample: compare with both sides of the step.
    n = x.size
    above = np.arange(1, n + 1) / n - ref_cdf
    below = ref_cdf - np.arange(n) / n
    return float(max(above.max(), below.max(), 0.0))


class DriftWatch:
    """A sliding-window KS watch for one bundle. `observe(score)` returns the statistic when one is computed."""

    def __init__(
        self,
        reference_quantiles: Sequence[float],
        *,
        bundle: str,
        publish: Callable[[float], None] = lambda statistic: None,
        window_scores: int = 500,
        min_scores: int = 100,
        ks_limit: float = 0.3,
        check_every: int = 10,
    ) -> None:
        self._reference = tuple(float(q) for q in reference_quantiles)
        self._bundle, self._limit = bundle, ks_limit
        self._min, self._every = min_scores, max(1, check_every)
        self._live: deque[float] = deque(maxlen=window_scores)
        self._seen = 0
        self.statistic: float | None = None
        self.stale = False  # in a drift episode
        self._in_line_since: int | None = None  # during an episode: `_seen` at the first check back in line
        self._untaken = False  # an episode began that `take_episode` has not returned yet
        self._publish = publish  # e.g. the bundle's child of Metrics.score_drift (metrics live in one module)

    @classmethod
    def from_config(
        cls,
        cfg: DriftConfig,
        reference_quantiles: Sequence[float],
        *,
        bundle: str,
        publish: Callable[[float], None] = lambda statistic: None,
    ) -> DriftWatch:
        return cls(reference_quantiles, bundle=bundle, publish=publish, window_scores=cfg.window_scores,
                   min_scores=cfg.min_scores, ks_limit=cfg.ks_limit,
                   check_every=max(10, cfg.window_scores // 5))  # fmt: skip

    def observe(self, score: float) -> float | None:
        """Add one live window score; every `check_every` scores (once `min_scores` are in) recompute the KS."""
        self._live.append(score)
        self._seen += 1
        if len(self._live) < self._min or self._seen % self._every:
            return None
        self.statistic = ks_statistic(self._live, self._reference)
        self._publish(self.statistic)
        self._note_crossing(self.statistic)
        return self.statistic

    def observe_many(self, scores: Sequence[float]) -> float | None:
        """Add a micro-batch of window scores; the KS statistic is recomputed (once, over the newest scores) when
        the batch crosses a multiple of `check_every` scores."""
        if len(scores) == 0:
            return None
        before = self._seen
        self._live.extend(scores)
        self._seen += len(scores)
        if len(self._live) < self._min or self._seen // self._every == before // self._every:
            return None
        self.statistic = ks_statistic(self._live, self._reference)
        self._publish(self.statistic)
        self._note_crossing(self.statistic)
        return self.statistic

    def take_episode(self) -> bool:
        """True once for each drift episode begun since the last call."""
        began, self._untaken = self._untaken, False
        return began

    def _note_crossing(self, statistic: float) -> None:
        if statistic > self._limit and not self.stale:
            self.stale, self._untaken, self._in_line_since = True, True, None
            log.warning("bundle %s: live scores drifted from calibration (KS %.3f > %.3f); the threshold may be stale",
                        self._bundle, statistic, self._limit)  # fmt: skip
        elif self.stale and statistic >= self._limit * 0.8:
            self._in_line_since = None  # not back in line (yet, or again): the quiet period starts over
        elif self.stale:
            if self._in_line_since is None:
                self._in_line_since = self._seen
            # Back in line for a whole window of new scores: none of the live window belongs to the episode.
            if self._seen - self._in_line_since >= (self._live.maxlen or 0):
                self.stale = False
                log.info("bundle %s: live scores back in line with calibration (KS %.3f)", self._bundle, statistic)
