"""Metrics: the bulk score histogram exposes what prometheus-client's Histogram would; per-stream series come and go."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from ae_monitor.metrics import Metrics, StreamReading
from ae_monitor.records import Alert, AlertStatus

NAME = "ae_monitor_score_ratio"
BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
LE = [*(repr(b) for b in BUCKETS), "+Inf"]


def _reference(batches: list[tuple[str, list[float]]]) -> CollectorRegistry:
    """A prometheus-client Histogram with the same buckets, fed the same values one by one."""
    registry = CollectorRegistry()
    hist = Histogram(NAME, "reference", ["bundle"], buckets=BUCKETS, registry=registry)
    for bundle, values in batches:
        for value in values:
            hist.labels(bundle).observe(value)
    return registry


def _bulk(batches: list[tuple[str, list[float]]]) -> Metrics:
    metrics = Metrics(CollectorRegistry())
    for bundle, values in batches:
        metrics.score_hist.observe_many(np.array(values, dtype=np.float64), bundle)
    return metrics


def _sample(metrics: Metrics, suffix: str, bundle: str, le: str | None = None) -> float | None:
    labels = {"bundle": bundle} if le is None else {"bundle": bundle, "le": le}
    return metrics.registry.get_sample_value(NAME + suffix, labels)


def _assert_same_exposition(metrics: Metrics, reference: CollectorRegistry, bundles: list[str]) -> None:
    for bundle in bundles:
        for le in LE:
            want = reference.get_sample_value(NAME + "_bucket", {"bundle": bundle, "le": le})
            assert _sample(metrics, "_bucket", bundle, le) == want, (bundle, le)
        assert _sample(metrics, "_count", bundle) == reference.get_sample_value(NAME + "_count", {"bundle": bundle})
        want_sum = reference.get_sample_value(NAME + "_sum", {"bundle": bundle})
        assert _sample(metrics, "_sum", bundle) == pytest.approx(want_sum, rel=1e-12, nan_ok=True)


def test_score_histogram_buckets_count_and_sum_equal_a_histogram_fed_one_by_one() -> None:
    rng = np.random.default_rng(0)
    on_bounds = list(BUCKETS)
    around_bounds = [float(np.nextafter(b, side)) for b in BUCKETS for side in (0.0, np.inf)]
    batches = [
        ("pump", on_bounds),
        ("pump", around_bounds),
        ("fan", rng.exponential(1.0, size=500).tolist()),
        ("pump", [0.0, -1.0, 10.5, 1e6, float("inf")]),
        ("fan", rng.uniform(0.0, 12.0, size=300).tolist()),
        ("pump", [1.0, 1.0, 0.1]),
    ]
    _assert_same_exposition(_bulk(batches), _reference(batches), ["pump", "fan"])


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    metrics = _bulk([("pump", [1.0])])
    assert _sample(metrics, "_bucket", "pump", "0.9") == 0
    assert _sample(metrics, "_bucket", "pump", "1.0") == 1
    assert _sample(metrics, "_bucket", "pump", "+Inf") == 1


def test_a_value_above_the_last_bound_counts_only_in_inf() -> None:
    metrics = _bulk([("pump", [10.0 + 1e-9])])
    assert [_sample(metrics, "_bucket", "pump", le) for le in LE] == [0] * len(BUCKETS) + [1]
    assert _sample(metrics, "_count", "pump") == 1
    assert _sample(metrics, "_sum", "pump") == 10.0 + 1e-9


def test_a_nan_value_is_counted_as_prometheus_client_counts_it() -> None:
    batches = [("pump", [0.5, float("nan")])]
    _assert_same_exposition(_bulk(batches), _reference(batches), ["pump"])


def test_labels_exports_a_series_at_zero_before_any_value() -> None:
    metrics = Metrics(CollectorRegistry())
    assert _sample(metrics, "_count", "pump") is None
    metrics.score_hist.labels("pump")
    assert [_sample(metrics, "_bucket", "pump", le) for le in LE] == [0] * len(LE)
    assert (_sample(metrics, "_count", "pump"), _sample(metrics, "_sum", "pump")) == (0, 0.0)
    assert _sample(metrics, "_count", "fan") is None
    metrics.score_hist.observe_many(np.array([0.3, 7.0]), "pump")
    metrics.score_hist.labels("pump")  # labelling again keeps what was observed
    assert (_sample(metrics, "_count", "pump"), _sample(metrics, "_sum", "pump")) == (2, 7.3)


def test_bundles_are_separate_series_of_one_histogram() -> None:
    metrics = _bulk([("pump", [0.2, 0.2]), ("fan", [4.0])])
    assert _sample(metrics, "_count", "pump") == 2
    assert _sample(metrics, "_bucket", "pump", "0.25") == 2
    assert _sample(metrics, "_count", "fan") == 1
    assert _sample(metrics, "_bucket", "fan", "3.0") == 0
    assert _sample(metrics, "_bucket", "fan", "5.0") == 1


# --- per-stream gauges --------------------------------------------------------------------------------------------


def test_per_stream_series_are_read_from_the_watched_states_at_each_scrape() -> None:
    metrics = Metrics(CollectorRegistry())
    readings = [StreamReading("pump-1", "pump", 0.7, 1.2, 1732600000.0)]
    metrics.streams.watch(lambda: readings)
    assert _stream_series(metrics, "pump-1", "pump") == [0.7, 1.2, 1732600000.0, None]
    readings = [StreamReading("pump-2", "pump", 0.1, 1.2, 5.0)]  # pump-1's state was dropped
    assert _stream_series(metrics, "pump-1", "pump") == [None] * 4
    assert _stream_series(metrics, "pump-2", "pump") == [0.1, 1.2, 5.0, None]


def test_a_stream_without_a_scored_window_exports_only_its_last_sample() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.streams.watch(lambda: [StreamReading("warming", "pump", None, None, 12.0)])
    assert _stream_series(metrics, "warming", "pump") == [None, None, 12.0, None]


def _stream_series(metrics: Metrics, stream: str, bundle: str) -> list[float | None]:
    get = metrics.registry.get_sample_value
    return [
        get("ae_monitor_window_score", {"stream": stream, "bundle": bundle}),
        get("ae_monitor_window_threshold", {"stream": stream, "bundle": bundle}),
        get("ae_monitor_stream_last_sample_timestamp_seconds", {"stream": stream}),
        get("ae_monitor_stream_firing", {"stream": stream}),
    ]


def test_forget_stream_removes_its_firing_series_and_only_its_own() -> None:
    metrics = Metrics(CollectorRegistry())
    for stream in ("pump-1", "pump-2"):
        metrics.firing.labels(stream).set(1)
    metrics.forget_stream("pump-1")
    assert _stream_series(metrics, "pump-1", "pump")[3] is None
    assert _stream_series(metrics, "pump-2", "pump")[3] == 1.0


def test_forget_stream_of_a_stream_that_never_fired_is_harmless() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.forget_stream("ghost")
    assert _stream_series(metrics, "ghost", "pump") == [None] * 4


def _alert(stream: str, status: AlertStatus, contributors: tuple[tuple[str, float], ...]) -> Alert:
    return Alert(id=f"{stream}-1", status=status, stream=stream, bundle_name="pump", bundle_version="v1",
                 event_time_s=1.0, detection_time_s=2.0, peak_score=3.0, mean_score=2.5, threshold=1.0, severity=3.0,
                 tail_probability=0.001, top_contributors=contributors)  # fmt: skip


def _contributions(metrics: Metrics, stream: str) -> dict[str, float]:
    return {
        s.labels["group"]: s.value
        for family in metrics.registry.collect()
        if family.name == "ae_monitor_alert_contribution"
        for s in family.samples
        if s.labels["stream"] == stream
    }


def test_each_streams_latest_firing_alert_exports_its_channel_shares_until_the_stream_is_forgotten() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.alerts_delivered([_alert("pump-1", "firing", (("current", 0.7), ("pressure", 0.2)))])
    metrics.alerts_delivered([_alert("pump-2", "firing", (("temperature", 0.9),))])
    assert _contributions(metrics, "pump-1") == {"current": 0.7, "pressure": 0.2}
    metrics.alerts_delivered([_alert("pump-1", "resolved", ())])  # a resolved alert leaves the last shares
    assert _contributions(metrics, "pump-1") == {"current": 0.7, "pressure": 0.2}
    metrics.alerts_delivered([_alert("pump-1", "firing", (("vibration", 0.8),))])  # the next one replaces them
    assert _contributions(metrics, "pump-1") == {"vibration": 0.8}
    metrics.forget_stream("pump-1")
    assert _contributions(metrics, "pump-1") == {}
    assert _contributions(metrics, "pump-2") == {"temperature": 0.9}
