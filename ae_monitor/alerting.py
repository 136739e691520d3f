"""Stage 7, alert decisions: one small state machine per stream turns window scores into alert events.

Scoring says how anomalous each window is; this module only decides when that becomes an alert. It holds no
clock and does no I/O: times come from the windows (event time) and `now_s` (detection time).

Semantics, per stream:

- The enter threshold is `window.threshold` (the calibrated one); the exit threshold is `exit_ratio` times it
  (hysteresis, so a score hovering near the threshold does not flap).
- Quiet: the anomalous flags (score > enter) of the last `n` windows are kept. An anomalous window extends the current
  *run*, or starts one when there is none; a run lapses once the look-back holds no anomalous window (so with
  n = 1 a run is a sequence of consecutive anomalous windows). An alert fires when at least `k` of the last `n`
  windows are anomalous, the run spans at least `min_duration_s` (first anomalous window's start to the current
  window's end) and at least `cooldown_s` have passed since the last resolution (both in event time, using
  `window.end_s`). Its `event_time_s` is the start of the run's first anomalous window and its id is
  `alert_id(stream, event_time_s, bundle_version)`, so replaying the same windows gives the same ids.
- Firing: peak and mean score are tracked over the episode's anomalous windows (those of the run before firing
  included); scores between exit and enter keep it firing. The first window scoring below the exit threshold
  emits the `resolved` alert (same id, `ends_at_s` = that window's end); the look-back starts empty again and the
  cooldown starts.
- A window that ends no later than the last one processed is ignored, so windows replayed after a restart with
  restored state are not counted twice.

Alerts carry the peak window's top feature groups (`top_contributors`, shares sorted descending, 4 decimals)
and `tail_probability` of the peak score under the calibration.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ae_monitor.config import AlertingConfig
from ae_monitor.errors import DataError, RecordError
from ae_monitor.records import Alert, AlertStatus, WindowScore
from ae_monitor.threshold import Calibration

STATE_VERSION = 1


def alert_id(stream: str, first_window_start_s: float, bundle_version: str) -> str:
    """Deterministic id of an alert episode: the first 16 hex digits of a sha256.

    >>> alert_id("pump-1", 12.5, "3")
    'f2cfd489c484eb52'
    """
    key = f"{stream}|{first_window_start_s:.6f}|{bundle_version}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass
class Episode:
    """A run of anomalous windows; it becomes a firing alert once `alert_id` is set."""

    start_s: float
    peak_score: float
    peak_contributions: tuple[float, ...]
    score_sum: float
    n_anomalous: int = 1
    alert_id: str | None = None
    threshold: float | None = None

    @staticmethod
    def begin(window: WindowScore) -> Episode:
        return Episode(window.start_s, window.score, window.contributions, window.score)

    def add(self, window: WindowScore) -> None:
        self.score_sum += window.score
        self.n_anomalous += 1
        if window.score > self.peak_score:
            self.peak_score, self.peak_contributions = window.score, window.contributions

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "peak_score": self.peak_score,
            "peak_contributions": list(self.peak_contributions),
            "score_sum": self.score_sum,
            "n_anomalous": self.n_anomalous,
            "alert_id": self.alert_id,
            "threshold": self.threshold,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Episode:
        threshold = d["threshold"]
        return Episode(
            start_s=float(d["start_s"]),
            peak_score=float(d["peak_score"]),
            peak_contributions=tuple(float(v) for v in d["peak_contributions"]),
            score_sum=float(d["score_sum"]),
            n_anomalous=int(d["n_anomalous"]),
            alert_id=None if d["alert_id"] is None else str(d["alert_id"]),
            threshold=None if threshold is None else float(threshold),
        )


@dataclass
class StreamAlertState:
    """Everything the policy remembers about one stream; `to_dict` is plain JSON so it can outlive a restart."""

    recent: list[bool] = field(default_factory=list)
    episode: Episode | None = None
    last_end_s: float | None = None
    last_resolved_end_s: float | None = None
    # The median of the stream's recent normal scores under a tracked threshold (calibration.online = "track"), so
    # that a stream that settled at a new level does not alert again from scratch after a restart or rebalance.
    tracked_median: float | None = None

    @property
    def firing(self) -> bool:
        return self.episode is not None and self.episode.alert_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "recent": list(self.recent),
            "episode": None if self.episode is None else self.episode.to_dict(),
            "last_end_s": self.last_end_s,
            "last_resolved_end_s": self.last_resolved_end_s,
            "tracked_median": self.tracked_median,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> StreamAlertState:
        """Inverse of `to_dict`; raises DataError when the saved state is unusable."""
        if d.get("version") != STATE_VERSION:
            raise DataError(f"alert state version {d.get('version')!r} is not {STATE_VERSION}; start from new_state()")
        try:
            return StreamAlertState(
                recent=[bool(v) for v in d["recent"]],
                episode=None if d["episode"] is None else Episode.from_dict(d["episode"]),
                last_end_s=_optional_float(d["last_end_s"]),
                last_resolved_end_s=_optional_float(d["last_resolved_end_s"]),
                tracked_median=_optional_float(d.get("tracked_median")),  # absent in states saved before it
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"saved alert state is malformed ({exc!r}); start from new_state()") from exc


class AlertPolicy:
    """The alert rules of one bundle, applied to any number of per-stream `StreamAlertState`s."""

    def __init__(
        self,
        cfg: AlertingConfig,
        *,
        bundle_name: str,
        bundle_version: str,
        group_names: tuple[str, ...],
        calibration: Calibration,
    ) -> None:
        self._cfg = cfg
        self._bundle_name = bundle_name
        self._bundle_version = bundle_version
        self._group_names = group_names
        self._calibration = calibration

    def new_state(self) -> StreamAlertState:
        return StreamAlertState()

    def update(self, state: StreamAlertState, window: WindowScore, *, now_s: float) -> list[Alert]:
        """Feed one window of the stream `state` belongs to; mutates `state` and returns 0 or 1 alerts.

        Raises RecordError (before touching `state`) when the window's contributions do not match the groups.
        """
        self._check_contributions(window)
        if state.last_end_s is not None and window.end_s <= state.last_end_s:
            return []
        state.last_end_s = window.end_s
        if state.firing:
            return self._update_firing(state, window, now_s)
        return self._update_quiet(state, window, now_s)

    def skip_quiet(self, state: StreamAlertState, count: int, *, first_end_s: float, last_end_s: float) -> bool:
        """Feed `count` windows of a quiet stream at once, none of them anomalous and ending in increasing order
        from `first_end_s` to `last_end_s`: the state afterwards is what `update` gives window by window (such
        windows can neither fire nor extend a run). Returns False, leaving `state` alone, when that shortcut does
        not apply: the stream fires, its look-back holds anomalous windows, or a window would be a replay."""
        if state.firing or any(state.recent) or (state.last_end_s is not None and first_end_s <= state.last_end_s):
            return False
        state.recent = [False] * min(self._cfg.n, len(state.recent) + count)
        state.episode = None
        state.last_end_s = last_end_s
        return True

    def _check_contributions(self, window: WindowScore) -> None:
        if window.contributions and len(window.contributions) != len(self._group_names):
            raise RecordError(
                f"window of stream {window.stream!r} has {len(window.contributions)} contributions but bundle "
                f"{self._bundle_name!r} has {len(self._group_names)} feature groups",
                reason="contributions_mismatch",
            )

    def _update_quiet(self, state: StreamAlertState, window: WindowScore, now_s: float) -> list[Alert]:
        state.recent = [*state.recent, window.anomalous][-self._cfg.n :]
        if window.anomalous and state.episode is not None:
            state.episode.add(window)
        elif window.anomalous:
            state.episode = Episode.begin(window)
        elif not any(state.recent):
            state.episode = None  # the run has lapsed: nothing anomalous left in the look-back
        if not self._should_fire(state, window):
            return []
        return [self._fire(state, window, now_s)]

    def _should_fire(self, state: StreamAlertState, window: WindowScore) -> bool:
        episode = state.episode
        if episode is None or sum(state.recent) < self._cfg.k:
            return False
        if window.end_s - episode.start_s < self._cfg.min_duration_s:
            return False
        last = state.last_resolved_end_s
        return last is None or window.end_s - last >= self._cfg.cooldown_s

    def _fire(self, state: StreamAlertState, window: WindowScore, now_s: float) -> Alert:
        episode = state.episode
        assert episode is not None  # checked by _should_fire
        episode.alert_id = alert_id(window.stream, episode.start_s, self._bundle_version)
        episode.threshold = window.threshold
        state.recent = []
        return self._alert(episode, window.stream, status="firing", now_s=now_s)

    def _update_firing(self, state: StreamAlertState, window: WindowScore, now_s: float) -> list[Alert]:
        episode = state.episode
        assert episode is not None  # state.firing implies an episode
        if window.score < self._cfg.exit_ratio * window.threshold:
            state.episode, state.recent, state.last_resolved_end_s = None, [], window.end_s
            return [self._alert(episode, window.stream, status="resolved", now_s=now_s, ends_at_s=window.end_s)]
        if window.anomalous:
            episode.add(window)
        return []

    def _alert(
        self, episode: Episode, stream: str, *, status: AlertStatus, now_s: float, ends_at_s: float | None = None
    ) -> Alert:
        # Both are set by _fire before any alert of the episode is built.
        assert episode.alert_id is not None
        assert episode.threshold is not None
        return Alert(
            id=episode.alert_id,
            status=status,
            stream=stream,
            bundle_name=self._bundle_name,
            bundle_version=self._bundle_version,
            event_time_s=episode.start_s,
            detection_time_s=now_s,
            peak_score=episode.peak_score,
            mean_score=episode.score_sum / episode.n_anomalous,
            threshold=episode.threshold,
            severity=_severity(episode.peak_score, episode.threshold),
            tail_probability=self._calibration.tail_probability(episode.peak_score),
            top_contributors=self._top_contributors(episode.peak_contributions),
            ends_at_s=ends_at_s,
            # Computed in log space: distinct far out in the tail, where tail_probability sits at its floor.
            surprise=_finite(round(self._calibration.surprise(episode.peak_score), 4)),
        )

    def _top_contributors(self, shares: tuple[float, ...]) -> tuple[tuple[str, float], ...]:
        if not shares:
            return ()
        ranked = sorted(zip(self._group_names, shares, strict=True), key=lambda pair: -pair[1])
        return tuple((name, round(share, 4)) for name, share in ranked[: self._cfg.top_contributors])


def _severity(peak_score: float, threshold: float) -> float:
    # A zero threshold (all calibration scores zero) makes any positive score infinitely severe.
    return peak_score / threshold if threshold != 0 else float("inf")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
