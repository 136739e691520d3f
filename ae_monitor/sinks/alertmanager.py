"""Stage 7, sink: alert events to Prometheus Alertmanager (API v2, `POST {url}/api/v2/alerts`).

Mapping (docs/alerts.md): labels `alertname="AeMonitorAnomaly"`, `stream`, `bundle`, `severity` (`critical` when
score/threshold >= 2, else `warning`) plus the configured static labels (which cannot override those four);
annotations carry the details (alert_id, scores, contributors) and `runbook_url`, docs/operations.md's runbook for
this alert (the same form as the Prometheus rules' runbook_url). `startsAt` is the event time; `generatorURL` (the
"Source" link in Alertmanager's UI) is the sending process: the /metrics URL of replay and the demo, or
`http://<host name>/` when the caller gives none.

Alertmanager semantics (prometheus.io/docs/alerting/clients): `endsAt` is set only when the end is known; a firing
alert without it ends `resolve_timeout` (default 5 min) after it was last received, and clients are expected to
re-send active alerts. So firing alerts omit `endsAt` and `tick(now_s)` re-sends them every `resend_interval_s`;
resolved alerts carry `endsAt` = the end of the window that resolved them, which resolves them at once.

Alertmanager identifies an alert by its labels, so a resolution must repeat the labels of the firing event. The
severity label is fixed by the firing event; the resolved event reuses it when this process sent the firing one,
and otherwise (after a restart) resolves both severities, which Alertmanager ignores for one that never fired.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from ae_monitor.config import HttpSinkConfig
from ae_monitor.errors import SinkError
from ae_monitor.records import Alert
from ae_monitor.sinks.delivery import Backoff
from ae_monitor.sinks.http import HttpTarget

log = logging.getLogger(__name__)

ALERTNAME = "AeMonitorAnomaly"
CRITICAL_SEVERITY = 2.0  # score/threshold at which an alert is critical rather than a warning
RESERVED_LABELS = ("alertname", "stream", "bundle", "severity")
API_PATH = "/api/v2/alerts"
RUNBOOK_URL = "docs/operations.md#runbook-aemonitoranomaly"


class AlertmanagerSink:
    """POSTs alert events to one Alertmanager; `send` returns once it answered 2xx (or raises SinkError). One attempt
    per call (sinks/http.py); the delivery queue retries with the sink's backoff."""

    name = "alertmanager"

    def __init__(
        self,
        target: HttpTarget,
        *,
        labels: Mapping[str, str] | None = None,
        generator_url: str | None = None,
        runbook_url: str = RUNBOOK_URL,
        resend_interval_s: float = 60.0,
    ) -> None:
        self._target = target
        self._labels = dict(labels or {})
        self._generator_url = generator_url or f"http://{socket.getfqdn()}/"
        self._runbook_url = runbook_url
        self._resend_interval_s = resend_interval_s
        self._active: dict[str, dict[str, Any]] = {}  # alert id -> the firing payload item, for re-sends
        self._last_resend_s: float | None = None

    @property
    def backoff(self) -> Backoff:
        return self._target.backoff

    @staticmethod
    def from_config(cfg: HttpSinkConfig, client: httpx.Client, **kwargs: Any) -> AlertmanagerSink:
        target = HttpTarget.from_config(cfg, client, sink=AlertmanagerSink.name, path=API_PATH)
        return AlertmanagerSink(target, labels=cfg.labels, **kwargs)

    def send(self, alerts: Sequence[Alert]) -> None:
        """POST all `alerts` in one request (an array, as the API takes it)."""
        if not alerts:
            return
        per_alert = [(alert, self._items(alert)) for alert in alerts]
        self._post([item for _, items in per_alert for item in items])
        for alert, items in per_alert:
            self._remember(alert, items[0])

    def tick(self, now_s: float) -> None:
        """Re-send the firing alerts once `resend_interval_s` passed (monotonic seconds); failures only log."""
        if self._last_resend_s is not None and now_s - self._last_resend_s < self._resend_interval_s:
            return
        self._last_resend_s = now_s
        if not self._active:
            return
        try:  # a re-send refreshes alerts Alertmanager already has, the next tick tries again
            self._post(list(self._active.values()))
        except SinkError as exc:
            log.warning("re-sending %d firing alerts failed: %s", len(self._active), exc)

    def _post(self, items: list[dict[str, Any]]) -> None:
        self._target.post(json.dumps(items, separators=(",", ":")).encode("utf-8"))

    def _items(self, alert: Alert) -> list[dict[str, Any]]:
        if alert.status == "firing":
            return [self._item(alert, severity_label(alert.severity))]
        remembered = self._active.get(alert.id)
        labels = [remembered["labels"]["severity"]] if remembered else ["warning", "critical"]
        return [self._item(alert, label) for label in labels]

    def _remember(self, alert: Alert, item: dict[str, Any]) -> None:
        if alert.status == "firing":
            self._active[alert.id] = item
        else:
            self._active.pop(alert.id, None)

    def _item(self, alert: Alert, severity: str) -> dict[str, Any]:
        labels = {**self._labels, "alertname": ALERTNAME, "stream": alert.stream, "bundle": alert.bundle_name}
        labels["severity"] = severity
        item: dict[str, Any] = {
            "labels": labels,
            "annotations": {**alert_annotations(alert), "runbook_url": self._runbook_url},
            "startsAt": rfc3339(alert.event_time_s),
            "generatorURL": self._generator_url,
        }
        if alert.status == "resolved":
            item["endsAt"] = rfc3339(alert.detection_time_s if alert.ends_at_s is None else alert.ends_at_s)
        return item


def severity_label(severity: float) -> str:
    """`critical` from twice the threshold up, else `warning`.

    >>> severity_label(1.3), severity_label(2.0)
    ('warning', 'critical')
    """
    return "critical" if severity >= CRITICAL_SEVERITY else "warning"


def alert_annotations(alert: Alert) -> dict[str, str]:
    """The alert's details as Alertmanager annotations (all values are text)."""
    contributors = ", ".join(f"{name} {share:.0%}" for name, share in alert.top_contributors)
    return {
        "summary": f"Anomaly on {alert.stream}: score {_num(alert.peak_score)} over threshold {_num(alert.threshold)}",
        "description": (
            f"Model {alert.bundle_name} (version {alert.bundle_version}) found {alert.stream} anomalous from "
            f"{rfc3339(alert.event_time_s)}: peak score {_num(alert.peak_score)}, mean {_num(alert.mean_score)}, "
            f"{_num(alert.severity)}x the threshold; probability of a score this high on normal data "
            f"{_probability(alert)}." + (f" Main contributors: {contributors}." if contributors else "")
        ),
        "alert_id": alert.id,
        "peak_score": _num(alert.peak_score),
        "threshold": _num(alert.threshold),
        "tail_probability": _probability(alert),
        "top_contributors": contributors,
    }


def rfc3339(epoch_s: float) -> str:
    """UTC, millisecond precision, `Z` suffix.

    >>> rfc3339(1732600000.25)
    '2024-11-26T05:46:40.250Z'
    """
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _probability(alert: Alert) -> str:
    """The tail probability for people: below 1e-300 (where the float sits at its floor, 2.2e-308) from the
    surprise, which is computed in log space: `1e-412.3`."""
    if alert.tail_probability >= 1e-300 or alert.surprise is None or math.isinf(alert.surprise):
        return _num(alert.tail_probability)
    return f"1e-{alert.surprise:.1f}"


def _num(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}"
