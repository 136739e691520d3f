"""Every Prometheus object ae_monitor exports, in one place, registered on an injected registry."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from ae_monitor.records import Alert

# Label values known in advance are exported at 0 from the start, so rate() and increase() see the first event
# and dashboards show 0 rather than "no data" on a healthy daemon.
DEAD_LETTER_REASONS = (
    "invalid_json", "missing_field", "invalid_field", "length_mismatch", "empty_value", "invalid_audio",
    "no_stream", "channel_mismatch", "sample_rate", "nan_value", "no_route", "wrong_kind", "shape", "invalid_record",
)  # fmt: skip
EVICTION_REASONS = ("idle", "capacity", "revoked", "lost")
LEARNING_STATES = (
    "learning",
    "scoring",
    "retraining",
)  # of a stream of a per-stream learning route (serve/learning.py)
RETRAINING_OUTCOMES = ("promoted", "discarded", "failed")


class Metrics:
    """The daemon's metrics. Pass a fresh `CollectorRegistry` in tests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records = Counter("ae_monitor_records", "Records consumed.", registry=registry)
        self.samples = Counter(
            "ae_monitor_samples", "Samples consumed (audio samples or sensor rows).", registry=registry
        )
        self.windows = Counter("ae_monitor_windows_scored", "Windows scored.", ["bundle"], registry=registry)
        self.threshold = Gauge("ae_monitor_threshold", "Calibrated alert threshold.", ["bundle"], registry=registry)
        # ae_monitor_window_score, ae_monitor_window_threshold, ae_monitor_stream_last_sample_timestamp_seconds
        self.streams = StreamSeries(registry)
        self.alerts = Counter("ae_monitor_alerts", "Alert events sent.", ["bundle", "status"], registry=registry)
        self.firing = Gauge(
            "ae_monitor_stream_firing", "1 while a stream's alert fires.", ["stream"], registry=registry
        )
        # Per alert rather than per window: a series per channel (or mel band) of every stream, set at every
        # window, would multiply the per-stream series by the channel count; alerts are few.
        self.alert_contribution = Gauge(
            "ae_monitor_alert_contribution",
            "Share of the reconstruction error per channel or mel band (top contributors) of each stream's latest "
            "firing alert.",
            ["stream", "bundle", "group"],
            registry=registry,
        )
        self._contributors: dict[str, list[tuple[str, str]]] = {}  # stream -> label pairs it exports
        self.dead_letters = Counter(
            "ae_monitor_dead_letters", "Records sent to the dead-letter sink.", ["reason"], registry=registry
        )
        self.streams_active = Gauge("ae_monitor_streams_active", "Streams with live state.", registry=registry)
        self.streams_warming = Gauge(
            "ae_monitor_streams_warming", "Streams that have not yet filled their first window.", registry=registry
        )
        self.batch_seconds = Histogram(
            "ae_monitor_scoring_batch_seconds",
            "Time to score one micro-batch.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.sink_failures = Counter(
            "ae_monitor_sink_failures",
            "Failed deliveries to a sink (the alerts stay queued).",
            ["sink"],
            registry=registry,
        )
        self.alerts_pending = Gauge(
            "ae_monitor_alerts_pending",
            "Alert events queued for a sink, not yet delivered.",
            ["sink"],
            registry=registry,
        )
        self.bundle_info = Gauge(
            "ae_monitor_bundle_info", "Loaded model bundles (value 1).", ["bundle", "version"], registry=registry
        )
        self.score_hist = BulkHistogram(
            "ae_monitor_score_ratio",
            "Window score divided by the bundle's threshold (1 = at the threshold).",
            ["bundle"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=registry,
        )
        self.surprise_hist = BulkHistogram(
            "ae_monitor_surprise",
            "Window surprise: -log10 P(normal score >= the window's score) under the bundle's calibration.",
            ["bundle"],
            buckets=(0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0),
            registry=registry,
        )
        self.late_samples = Counter(
            "ae_monitor_late_samples", "Samples dropped for arriving after newer ones.", registry=registry
        )
        self.out_of_range = Counter(
            "ae_monitor_out_of_range_windows",
            "Sensor windows whose newest sample lies more than 10 training standard deviations from a channel's "
            "training mean: unlike anything the model was trained on, whatever the cause.",
            ["bundle", "channel"],
            registry=registry,
        )
        self.evicted = Counter("ae_monitor_streams_evicted", "Stream states dropped.", ["reason"], registry=registry)
        self.record_latency = Histogram(
            "ae_monitor_record_to_score_seconds",
            "Wall time from a record's arrival to the scoring of its windows.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.alert_latency = Histogram(
            "ae_monitor_event_to_alert_seconds",
            "Wall time from the end of the window that fired an alert to the alert's detection.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "ae_monitor_consumer_lag", "Records behind the partition's end.", ["topic", "partition"], registry=registry
        )
        self.uncommitted = Gauge(
            "ae_monitor_uncommitted_records",
            "Records of the partition after its last acknowledged commit: what a restart would read again.",
            ["topic", "partition"],
            registry=registry,
        )
        self.last_commit = Gauge(
            "ae_monitor_last_commit_timestamp_seconds", "When offsets were last committed.", registry=registry
        )
        self.heartbeat = Gauge(
            "ae_monitor_heartbeat_timestamp_seconds",
            "When the main loop last completed an iteration.",
            registry=registry,
        )
        self.ready = Gauge("ae_monitor_ready", "1 when bundles are loaded and partitions assigned.", registry=registry)
        self.score_drift = Gauge(
            "ae_monitor_score_drift_ks",
            "KS statistic between live window scores and the bundle's calibration scores.",
            ["bundle"],
            registry=registry,
        )
        self.reloads = Counter("ae_monitor_bundle_reloads", "Bundle reload attempts.", ["result"], registry=registry)
        self.partitions = Gauge(
            "ae_monitor_partitions_assigned", "Partitions owned by this process.", registry=registry
        )
        self.learning_streams = Gauge(
            "ae_monitor_learning_streams",
            "Streams of per-stream learning routes by state: learning (probation data, training), scoring (with a "
            "model of their own) or retraining (a candidate model training or scoring in shadow).",
            ["state"],
            registry=registry,
        )
        self.trainings = Counter(
            "ae_monitor_learning_trainings",
            "Per-stream trainings finished, by outcome (ok: registered and scoring; failed: retried later).",
            ["outcome"],
            registry=registry,
        )
        self.retrainings = Counter(
            "ae_monitor_learning_retrainings",
            "Retraining cycles of learned per-stream models, by outcome (promoted after its shadow period, discarded "
            "by the shadow decision, failed to train).",
            ["outcome"],
            registry=registry,
        )
        self.shadow_alerts = Counter(
            "ae_monitor_shadow_alerts",
            "Alerts a candidate model would have raised while it scored in shadow (counted, never sent).",
            ["model"],
            registry=registry,
        )

    def start_at_zero(self, bundles: tuple[str, ...] = ()) -> None:
        """Export every known label value at 0 (see DEAD_LETTER_REASONS)."""
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for reason in EVICTION_REASONS:
            self.evicted.labels(reason)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
            self.trainings.labels(result)
        for state in LEARNING_STATES:
            self.learning_streams.labels(state)
        for outcome in RETRAINING_OUTCOMES:
            self.retrainings.labels(outcome)
        for bundle in bundles:
            self.bundle_started(bundle)

    def bundle_started(self, bundle: str) -> None:
        for status in ("firing", "resolved"):
            self.alerts.labels(bundle, status)
        self.windows.labels(bundle)

    def forget_stream(self, stream: str) -> None:
        """Drop a stream's firing and contribution series when its state is dropped (the other per-stream series
        are read from the live stream states, so they go by themselves)."""
        with contextlib.suppress(KeyError):  # never fired
            self.firing.remove(stream)
        for bundle, group in self._contributors.pop(stream, []):
            self.alert_contribution.remove(stream, bundle, group)

    def forget_bundle_version(self, bundle: str, version: str) -> None:
        """Drop the `bundle_info` series of a version no longer loaded (a learned model replaced by another)."""
        with contextlib.suppress(KeyError):
            self.bundle_info.remove(bundle, version)

    def forget_bundle(self, bundle: str, *, version: str, channels: Iterable[str] = ()) -> None:
        """Drop every series labelled with `bundle` (its `version` and sensor `channels`): a learned per-stream
        model whose stream went away. Only for a bundle no other slot uses."""
        self.forget_bundle_version(bundle, version)
        children: list[tuple[Counter | Gauge, tuple[str, ...]]] = [
            (self.windows, (bundle,)), (self.threshold, (bundle,)), (self.score_drift, (bundle,)),
            *((self.alerts, (bundle, status)) for status in ("firing", "resolved")),
            *((self.out_of_range, (bundle, channel)) for channel in channels),
        ]  # fmt: skip
        for metric, labels in children:
            with contextlib.suppress(KeyError):  # never exported
                metric.remove(*labels)
        self.score_hist.remove(bundle)
        self.surprise_hist.remove(bundle)

    def forget_shadow(self, model: str) -> None:
        """Drop a learned model's shadow-alert series (its stream went away)."""
        with contextlib.suppress(KeyError):
            self.shadow_alerts.remove(model)

    def alerts_delivered(self, alerts: Sequence[Alert]) -> None:
        """Export the top contributors of each newly firing alert, replacing the stream's previous ones."""
        for alert in alerts:
            if alert.status != "firing" or not alert.top_contributors:
                continue
            for bundle, group in self._contributors.pop(alert.stream, []):
                self.alert_contribution.remove(alert.stream, bundle, group)
            for group, share in alert.top_contributors:
                self.alert_contribution.labels(alert.stream, alert.bundle_name, group).set(share)
            self._contributors[alert.stream] = [(alert.bundle_name, group) for group, _ in alert.top_contributors]


@dataclass(frozen=True)
class StreamReading:
    """One stream's per-stream series: its newest window's score and threshold (None before its first window)
    and the event time of its newest sample."""

    stream: str
    bundle: str
    score: float | None
    threshold: float | None
    last_sample_s: float | None
    surprise: float | None = None


class StreamSeries:
    """The per-stream gauges, read from the owner's stream states when Prometheus scrapes.

    Setting three labelled gauges per stream in every micro-batch cost more than scoring the stream's windows; the
    pipeline only keeps the newest values in its stream states and hands over a function that reads them."""

    _DOCS = (
        ("ae_monitor_window_score", "Latest window score.", ("stream", "bundle")),
        ("ae_monitor_window_threshold",
         "Threshold the latest window was judged against (differs per stream with live DSPOT thresholds).",
         ("stream", "bundle")),
        ("ae_monitor_stream_last_sample_timestamp_seconds", "Event time of the newest sample of each stream.",
         ("stream",)),
        ("ae_monitor_window_surprise",
         "Latest window's surprise: -log10 of the probability of its score on normal data (comparable across streams).",
         ("stream", "bundle")),
    )  # fmt: skip

    def __init__(self, registry: CollectorRegistry) -> None:
        self._read: Callable[[], Iterable[StreamReading]] = tuple
        registry.register(self)

    def watch(self, read: Callable[[], Iterable[StreamReading]]) -> None:
        """Export what `read` returns at each scrape (it runs on the HTTP server's thread)."""
        self._read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, doc, labels in self._DOCS:
            yield GaugeMetricFamily(name, doc, labels=list(labels))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = [GaugeMetricFamily(name, doc, labels=list(labels)) for name, doc, labels in self._DOCS]
        score, threshold, last, surprise = families
        for reading in self._read():
            if reading.score is not None and reading.threshold is not None:
                score.add_metric([reading.stream, reading.bundle], reading.score)
                threshold.add_metric([reading.stream, reading.bundle], reading.threshold)
            if reading.last_sample_s is not None:
                last.add_metric([reading.stream], reading.last_sample_s)
            if reading.surprise is not None and math.isfinite(reading.surprise):
                surprise.add_metric([reading.stream, reading.bundle], reading.surprise)
        yield from families


class BulkHistogram:
    """A labelled Prometheus histogram observed a whole array at a time.

    prometheus-client's Histogram takes one value per call, which cost more than scoring the window itself at the
    daemon's rates; this one bins a micro-batch with numpy and is exported through the documented custom-collector
    interface (same series: `_bucket{le=...}`, `_count`, `_sum`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._bounds = np.array([*buckets, float("inf")])
        self._series: dict[tuple[str, ...], tuple[npt.NDArray[np.int64], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> None:
        """Export the series of these label values (at zero until observed)."""
        with self._lock:
            self._child(values)

    def remove(self, *values: str) -> None:
        """Stop exporting the series of these label values (nothing when there is none)."""
        with self._lock:
            self._series.pop(values, None)

    def observe_many(self, values: npt.NDArray[np.float64], *labels: str) -> None:
        if len(values) == 0:
            return
        total = float(values.sum())  # NaN once a NaN is observed, as prometheus-client's Histogram does
        values = values[~np.isnan(values)]  # ... which counts a NaN in no bucket
        bins = np.minimum(np.searchsorted(self._bounds, values, side="left"), len(self._bounds) - 1)
        counts = np.bincount(bins, minlength=len(self._bounds))
        with self._lock:
            series, sums = self._child(labels)
            series += counts
            sums[0] += total

    def _child(self, labels: tuple[str, ...]) -> tuple[npt.NDArray[np.int64], list[float]]:
        if labels not in self._series:
            self._series[labels] = (np.zeros(len(self._bounds), dtype=np.int64), [0.0])
        return self._series[labels]

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            series = [(labels, np.cumsum(counts).tolist(), sums[0]) for labels, (counts, sums) in self._series.items()]
        for labels, cumulative, total in series:
            bounds = ["+Inf" if le == float("inf") else repr(le) for le in self._bounds.tolist()]
            buckets = list(zip(bounds, cumulative, strict=True))
            family.add_metric(list(labels), buckets, total)
        yield family
