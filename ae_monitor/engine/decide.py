"""Alert decisions: each stream's new windows through its bundle's alert policy (k-of-n, hysteresis, cooldown)."""

from __future__ import annotations

import numpy as np

from ae_monitor.alerting import AlertPolicy
from ae_monitor.engine.batch import Scored
from ae_monitor.engine.streams import StreamState, StreamTable
from ae_monitor.metrics import Metrics
from ae_monitor.records import Alert, WindowScore


def decide(scored: list[Scored], streams: StreamTable, *, metrics: Metrics, now_s: float) -> list[Alert]:
    """The alert events (firing, resolved) the micro-batch's windows cause, stream by stream in window order."""
    alerts: list[Alert] = []
    for part in scored:
        table, policy = part.table, part.slot.policy
        spans = [span for span in part.spans if span[2] > span[1]]
        if not spans:
            continue
        starts = np.array([start for _, start, _ in spans])
        # Whether each span holds an anomalous window, for all spans in one call (they tile the table).
        anomalous = np.logical_or.reduceat(table.score[starts[0] :] > table.threshold[starts[0] :], starts - starts[0])
        for (stream, start, stop), any_anomalous in zip(spans, anomalous.tolist(), strict=True):
            state = streams.get(stream)
            if state is None:
                continue  # evicted for capacity later in the same batch; its next record starts it again
            if not any_anomalous and policy.skip_quiet(
                state.alert, stop - start, first_end_s=float(table.end_s[start]),
                last_end_s=float(table.end_s[stop - 1]),
            ):  # fmt: skip
                continue  # the common case: a quiet stream stays quiet
            alerts += _decide_windows(state, policy, table.rows(start, stop), metrics=metrics, now_s=now_s)
    return alerts


def _decide_windows(state: StreamState, policy: AlertPolicy, windows: list[WindowScore], *, metrics: Metrics,
                    now_s: float) -> list[Alert]:  # fmt: skip
    alerts: list[Alert] = []
    for window in windows:
        new = policy.update(state.alert, window, now_s=now_s)
        # Persist what a restart needs: episodes and the anomalous windows counting towards one. A quiet stream's
        # state is not republished for every window.
        state.alert_changed |= bool(new) or window.anomalous or state.alert.firing
        for _ in new:
            metrics.alert_latency.observe(max(0.0, now_s - window.end_s))
        alerts.extend(new)
    return alerts
