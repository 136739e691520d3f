"""Retraining of learned per-stream models (`[learning.retrain]`): the rows a candidate trains on (`Reservoir`), what
starts a retraining (`retrain_trigger`), the candidate scoring beside production without alerting (`Shadow`), and
whether it may replace production (`shadow_decision`). The learner (serve/learning.py) drives them; this module holds
no state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from ae_monitor.config import AlertingConfig, DriftConfig, RetrainConfig
from ae_monitor.engine import Engine
from ae_monitor.errors import RegistryError
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import Record, SampleRows
from ae_monitor.registry import Registry

if TYPE_CHECKING:
    from ae_monitor.serve.learning import Learned

F64 = npt.NDArray[np.float64]
Trigger = Literal["alert share", "drift", "schedule"]
FLAGGED_SHARE = 0.5  # a synthetic fault counts as flagged when at least this share of its windows is anomalous


class Reservoir:
    """A scoring stream's recent rows for retraining: the last `limit` rows in no window production flagged.

    Rows wait until every window that can hold them was scored (`judge`: the stream's windows in order, with
    whether each was anomalous, score above threshold). A row of an anomalous window is left out, so a fault is not
    learned as normal, unless it came while the stream's share of anomalous windows among its last `lookback`
    stayed at or above `alert_share`: that is a sustained change of level (a new operating point), which the
    candidate must learn. When the share first reaches the limit the rows kept so far are dropped, so the reservoir
    then fills with rows of the new level only; `due` once it is full while the share holds."""

    def __init__(self, cfg: RetrainConfig, channels: Sequence[str]) -> None:
        self.limit, self.channels, self.cfg = cfg.reservoir_samples, tuple(channels), cfg
        self._ts = np.empty(self.limit, dtype=np.float64)
        self._values = np.empty((self.limit, len(self.channels)), dtype=np.float64)
        self.count, self._next = 0, 0  # rows kept; where the next one goes (a ring)
        self.kept_total = 0  # rows ever kept (a drift-triggered retraining waits for a full reservoir's worth more)
        self._pending_ts = np.zeros(0)
        self._pending = np.zeros((0, len(self.channels)))
        self._left_out = np.zeros(0, dtype=bool)
        self._flags = np.zeros(0, dtype=bool)  # the last `lookback` windows: anomalous or not
        self.sustained = False

    @property
    def share(self) -> float:
        """The share of anomalous windows among the last `lookback` (windows not seen yet count as quiet)."""
        return float(self._flags.sum()) / self.cfg.lookback_windows

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    @property
    def due(self) -> bool:
        """Full of rows of a new operating point (the alert-share trigger)."""
        return self.sustained and self.full

    def add_ordered(self, ts: F64, values: F64) -> None:
        """Rows (in the training channels' order) that wait for their windows' verdicts; late ones are skipped."""
        last = self._pending_ts[-1] if len(self._pending_ts) else -np.inf
        newer = ts > np.maximum.accumulate(np.concatenate([[last], ts]))[:-1]
        # Rows wait a window and a batch or so; a stream whose windows are not scored (all late) must not grow it.
        bound = 2 * self.limit
        self._pending_ts = np.concatenate([self._pending_ts, ts[newer]])[-bound:]
        self._pending = np.concatenate([self._pending, values[newer]])[-bound:]
        self._left_out = np.concatenate([self._left_out, np.zeros(int(newer.sum()), dtype=bool)])[-bound:]

    def judge(self, start_s: F64, end_s: F64, anomalous: npt.NDArray[np.bool_]) -> None:
        """The stream's next windows ([start, end) in event time, in order) and whether each was anomalous."""
        if not len(start_s):
            return
        look = self.cfg.lookback_windows
        flags = np.concatenate([self._flags, anomalous])
        before = len(self._flags)
        sums = np.cumsum(np.concatenate([[0], flags]))
        at = np.arange(before, len(flags)) + 1
        shares = (sums[at] - sums[np.maximum(at - look, 0)]) / look
        sustained = shares >= self.cfg.alert_share
        if sustained.any() and not self.sustained:
            self.count, self._next = 0, 0  # a new operating point: the rows of the old one go
        self.sustained = bool(sustained[-1])
        self._flags = flags[-look:]
        out = anomalous & ~sustained
        if out.any():
            ts = self._pending_ts
            lo, hi = np.searchsorted(ts, start_s[out]), np.searchsorted(ts, end_s[out])
            marks = np.zeros(len(ts) + 1, dtype=np.int64)
            np.add.at(marks, lo, 1)
            np.add.at(marks, hi, -1)
            self._left_out |= np.cumsum(marks)[:-1] > 0
        # No later window starts before this one: the rows before it have all their verdicts.
        decided = int(np.searchsorted(self._pending_ts, start_s[-1]))
        keep = ~self._left_out[:decided]
        self._keep(self._pending_ts[:decided][keep], self._pending[:decided][keep])
        self._pending_ts, self._pending = self._pending_ts[decided:], self._pending[decided:]
        self._left_out = self._left_out[decided:]

    def _keep(self, ts: F64, values: F64) -> None:
        ts, values = ts[-self.limit :], values[-self.limit :]
        at = (self._next + np.arange(len(ts))) % self.limit
        self._ts[at], self._values[at] = ts, values
        self._next = int((self._next + len(ts)) % self.limit)
        self.count = min(self.limit, self.count + len(ts))
        self.kept_total += len(ts)

    def rows(self) -> tuple[F64, F64]:
        """The kept rows, oldest first."""
        order = (self._next - self.count + np.arange(self.count)) % self.limit
        return self._ts[order], self._values[order]

    def clear(self) -> None:
        """Start again (a new production model judges the rows from now on)."""
        self.count, self._next, self.sustained = 0, 0, False
        self._flags = np.zeros(0, dtype=bool)


def retrain_trigger(reservoir: Reservoir, cfg: RetrainConfig, *, drift_from: int | None,
                    model_age_s: float) -> Trigger | None:  # fmt: skip
    """Why a scoring stream retrains now, if it does: always on a full reservoir, once its alert share stays high
    ("alert share"), its reservoir kept a full one's worth of rows since its model's drift watch fired at
    `drift_from` rows ("drift"), or its model is older than `max_model_age_s` ("schedule")."""
    if not reservoir.full:
        return None
    if reservoir.sustained:
        return "alert share"
    if drift_from is not None and reservoir.kept_total - drift_from >= reservoir.limit:
        return "drift"
    if cfg.max_model_age_s and model_age_s >= cfg.max_model_age_s:
        return "schedule"
    return None


def registered_s(registry: Registry, model: str, alias: str) -> float | None:
    """When the version `alias` names was registered (Unix time, from its provenance); None without the alias (no
    candidate yet) or the time (a provenance written by hand)."""
    try:
        return datetime.fromisoformat(registry.resolve(model, alias).provenance["registered_at"]).timestamp()
    except (RegistryError, KeyError, TypeError, ValueError):
        return None


class Shadow:
    """A candidate model scoring a stream's rows beside production, in an engine of its own: its windows and would-be
    alerts are counted, never delivered. Production's windows over the same period come from serve's results."""

    def __init__(self, stream: str, candidate: Bundle, learned: Learned, *, alerting: AlertingConfig) -> None:
        self.stream, self.candidate, self.learned = stream, candidate, learned
        # Its own metrics registry: the candidate's windows must not count as production's in /metrics.
        # No drift watch: it would warn under the production model's name about a model that is not serving.
        self._engine = Engine({"candidate": candidate}, alerting=alerting, metrics=Metrics(CollectorRegistry()),
                              drift=DriftConfig(enabled=False))  # fmt: skip
        self.windows = self.anomalous = self.alerts = 0
        self.production_windows = self.production_anomalous = 0

    def feed(self, items: Sequence[Record | SampleRows]) -> int:
        """Score the stream's rows among `items`; returns the would-be alerts (firing) they raised."""
        mine: list[Record | SampleRows] = []
        for item in items:
            if isinstance(item, SampleRows):
                at = [i for i, s in enumerate(item.streams) if s == self.stream]
                if at:
                    tags = {name: [column[i] for i in at] for name, column in item.tags.items()}
                    mine.append(SampleRows([self.stream] * len(at), item.ts_s[at], item.values[at], item.channels,
                                           tags))  # fmt: skip
            elif item.stream == self.stream:
                mine.append(item)
        if not mine:
            return 0
        result = self._engine.process(mine)
        for table in result.tables:
            self.windows += len(table)
            self.anomalous += int(np.sum(table.score > table.threshold))
        firing = sum(alert.status == "firing" for alert in result.alerts)
        self.alerts += firing
        return firing

    def production(self, windows: int, anomalous: int) -> None:
        self.production_windows += windows
        self.production_anomalous += anomalous

    def summary(self) -> dict[str, float | int]:
        return {"shadow_windows": self.windows, "shadow_false_alert_share": _share(self.anomalous, self.windows),
                "shadow_alerts": self.alerts, "production_windows": self.production_windows,
                "production_false_alert_share": _share(self.production_anomalous, self.production_windows)}  # fmt: skip


def shadow_decision(shadow: Shadow) -> str | None:
    """None when the candidate may be promoted; else why not. It must flag no larger share of the shadow windows
    than production did over the same period (both read as false alerts: the windows are the stream's live normal),
    and flag every synthetic fault production flags, and at least one."""
    mine = _share(shadow.anomalous, shadow.windows)
    theirs = _share(shadow.production_anomalous, shadow.production_windows)
    if mine > theirs:
        return f"its shadow false-alert share {mine:.4f} is worse than production's {theirs:.4f}"
    checks = shadow.learned.fault_check
    missed = [c for c, (prod, cand) in checks.items() if prod >= FLAGGED_SHARE and cand < FLAGGED_SHARE]
    if missed:
        return f"it misses the synthetic fault on {', '.join(missed)} that production flags"
    if not any(cand >= FLAGGED_SHARE for _, cand in checks.values()):
        return "it flags none of the synthetic faults"
    return None


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
