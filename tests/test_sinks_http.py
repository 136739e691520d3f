"""Alertmanager and webhook sinks against a real local HTTP server that can be told to fail."""

from __future__ import annotations

import itertools
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ae_monitor.config import HttpSinkConfig
from ae_monitor.errors import ConfigError, SinkError
from ae_monitor.records import Alert
from ae_monitor.sinks.alertmanager import AlertmanagerSink, alert_annotations
from ae_monitor.sinks.delivery import Backoff, DeliveryQueue
from ae_monitor.sinks.http import HttpTarget
from ae_monitor.sinks.jsonl import to_json
from ae_monitor.sinks.webhook import WebhookSink


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0  # what the server answered


@dataclass
class Receiver:
    """What the test server got, and how it should answer the next requests."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, received: Received) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests.append(received)
            received.status = 200
            if self.fail_next > 0:
                self.fail_next -= 1
                received.status = self.fail_status
                return self.fail_status, ({"Retry-After": self.retry_after} if self.retry_after else {})
            return 200, {}

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body))
            status, headers = state.answer(received)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


def _alert(stream: str = "pump-1", status: str = "firing", **fields: Any) -> Alert:
    values: dict[str, Any] = {
        "id": f"id-{stream}",
        "status": status,
        "stream": stream,
        "bundle_name": "pump",
        "bundle_version": "abc123",
        "event_time_s": 1732600000.25,
        "detection_time_s": 1732600012.5,
        "peak_score": 3.0,
        "mean_score": 2.5,
        "threshold": 2.0,
        "severity": 1.5,
        "tail_probability": 1e-4,
        "top_contributors": (("vibration", 0.7), ("current", 0.2)),
    }
    return Alert(**{**values, **fields})


def _target(client: httpx.Client, url: str, *, sink: str = "alertmanager", **kwargs: Any) -> HttpTarget:
    path = "/api/v2/alerts" if sink == "alertmanager" else ""
    return HttpTarget.from_config(HttpSinkConfig(url=url, **kwargs), client, sink=sink, path=path)


def _am(client: httpx.Client, receiver: Receiver, **kwargs: Any) -> AlertmanagerSink:
    return AlertmanagerSink(_target(client, receiver.url), labels={"site": "plant-2"}, **kwargs)


def test_the_alert_json_in_docs_alerts_md_is_what_to_json_writes_with_a_real_id() -> None:
    from ae_monitor.alerting import alert_id

    text = (Path(__file__).resolve().parents[1] / "docs" / "alerts.md").read_text()
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    fields = {k: v for k, v in example.items() if k in Alert.__dataclass_fields__ and k != "top_contributors"}
    contributors = tuple((c["name"], c["share"]) for c in example["top_contributors"])
    assert json.loads(to_json(Alert(**fields, top_contributors=contributors))) == example
    assert example["id"] == alert_id(example["stream"], example["event_time_s"], example["bundle_version"])


def test_alert_json_gives_each_epoch_time_beside_it_in_iso_8601_utc() -> None:
    firing = json.loads(to_json(_alert()))
    assert firing["event_time"] == "2024-11-26T05:46:40.250Z"
    assert firing["event_time_s"] == 1732600000.25
    assert firing["ends_at"] is None
    resolved = json.loads(to_json(_alert(status="resolved", ends_at_s=1732600060.0)))
    assert resolved["ends_at"] == "2024-11-26T05:47:40.000Z"
    assert resolved["detection_time"].endswith("Z")


# --- Alertmanager payload ------------------------------------------------------------------------------------------


def test_a_tail_probability_below_the_floats_range_is_written_from_the_surprise_never_as_2_2e_308() -> None:
    far_out = alert_annotations(_alert(tail_probability=2.2250738585072014e-308, surprise=412.34))
    assert far_out["tail_probability"] == "1e-412.3"
    assert "on normal data 1e-412.3." in far_out["description"]
    assert "e-308" not in json.dumps(far_out)
    assert alert_annotations(_alert(tail_probability=1e-4, surprise=4.0))["tail_probability"] == "0.0001"


def test_alert_json_writes_a_tail_probability_below_1e_300_as_0_never_as_2_2e_308() -> None:
    far_out = json.loads(to_json(_alert(tail_probability=2.2250738585072014e-308, surprise=412.34)))
    assert far_out["tail_probability"] == 0.0
    assert far_out["surprise"] == 412.34
    assert json.loads(to_json(_alert(tail_probability=1e-4, surprise=4.0)))["tail_probability"] == 1e-4


def test_alertmanager_alerts_carry_a_runbook_url_and_a_generator_url_by_default(
    client: httpx.Client, receiver: Receiver
) -> None:
    _am(client, receiver).send([_alert()])
    (item,) = receiver.requests[0].body
    assert item["annotations"]["runbook_url"] == "docs/operations.md#runbook-aemonitoranomaly"
    assert item["generatorURL"] == f"http://{socket.getfqdn()}/"
    runbook = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    assert "### Runbook: AeMonitorAnomaly" in runbook


def test_a_firing_alert_posts_labels_annotations_and_starts_at_without_ends_at(
    client: httpx.Client, receiver: Receiver
) -> None:
    _am(client, receiver, generator_url="http://ae-monitor:9108/").send([_alert()])
    (request,) = receiver.requests
    assert request.path == "/api/v2/alerts"
    assert request.headers["content-type"] == "application/json"
    (item,) = request.body
    assert item["labels"] == {
        "alertname": "AeMonitorAnomaly",
        "stream": "pump-1",
        "bundle": "pump",
        "severity": "warning",
        "site": "plant-2",
    }
    assert item["startsAt"] == "2024-11-26T05:46:40.250Z"
    assert "endsAt" not in item  # Alertmanager keeps it firing for resolve_timeout after each (re-)send
    assert item["generatorURL"] == "http://ae-monitor:9108/"
    notes = item["annotations"]
    assert notes["alert_id"] == "id-pump-1"
    assert (notes["peak_score"], notes["threshold"], notes["tail_probability"]) == ("3", "2", "0.0001")
    assert notes["top_contributors"] == "vibration 70%, current 20%"
    assert "pump-1" in notes["summary"]
    assert "abc123" in notes["description"]


def test_severity_is_critical_from_twice_the_threshold(client: httpx.Client, receiver: Receiver) -> None:
    _am(client, receiver).send([_alert(severity=2.0)])
    assert receiver.requests[0].body[0]["labels"]["severity"] == "critical"


def test_a_resolved_alert_carries_ends_at_and_the_labels_it_fired_with(
    client: httpx.Client, receiver: Receiver
) -> None:
    sink = _am(client, receiver)
    sink.send([_alert(severity=1.5)])
    # The peak grew past twice the threshold before resolving: the label must still be the firing one.
    sink.send([_alert(status="resolved", severity=2.5, ends_at_s=1732600060.0)])
    (item,) = receiver.requests[1].body
    assert item["labels"]["severity"] == "warning"
    assert item["startsAt"] == "2024-11-26T05:46:40.250Z"
    assert item["endsAt"] == "2024-11-26T05:47:40.000Z"


def test_a_resolution_whose_firing_this_process_never_sent_resolves_both_severities(
    client: httpx.Client, receiver: Receiver
) -> None:
    _am(client, receiver).send([_alert(status="resolved", ends_at_s=1732600060.0)])
    assert sorted(item["labels"]["severity"] for item in receiver.requests[0].body) == ["critical", "warning"]
    assert all("endsAt" in item for item in receiver.requests[0].body)


def test_static_labels_cannot_override_the_identifying_labels(client: httpx.Client, receiver: Receiver) -> None:
    AlertmanagerSink(_target(client, receiver.url), labels={"stream": "x", "team": "ops"}).send([_alert()])
    labels = receiver.requests[0].body[0]["labels"]
    assert (labels["stream"], labels["team"]) == ("pump-1", "ops")


def test_tick_re_sends_firing_alerts_each_interval_and_forgets_resolved_ones(
    client: httpx.Client, receiver: Receiver
) -> None:
    sink = _am(client, receiver, resend_interval_s=60)
    sink.send([_alert("pump-1"), _alert("pump-2")])
    sink.tick(1000.0)
    sink.tick(1030.0)  # too early: nothing
    assert len(receiver.requests) == 2
    assert {i["labels"]["stream"] for i in receiver.requests[1].body} == {"pump-1", "pump-2"}
    sink.send([_alert("pump-1", status="resolved", ends_at_s=1732600060.0)])
    sink.tick(1060.0)
    assert [i["labels"]["stream"] for i in receiver.requests[3].body] == ["pump-2"]


def test_a_failed_re_send_only_logs(client: httpx.Client, receiver: Receiver) -> None:
    sink = _am(client, receiver)
    sink.send([_alert()])
    receiver.fail_next = 5
    sink.tick(0.0)  # one try, no retries, no exception
    assert len(receiver.requests) == 2


def test_from_config_needs_a_url(client: httpx.Client) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.alertmanager\.url"):
        AlertmanagerSink.from_config(HttpSinkConfig(), client)


# --- one attempt per call; the delivery queue retries -------------------------------------------------------------


def test_a_5xx_raises_a_retriable_sink_error_after_one_attempt_without_sleeping(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_next = 10
    with pytest.raises(SinkError, match="HTTP 503") as info:
        _am(client, receiver).send([_alert()])
    assert info.value.retriable
    assert info.value.sink == "alertmanager"
    assert len(receiver.requests) == 1


def test_a_429_carries_the_retry_after_the_receiver_asked_for(client: httpx.Client, receiver: Receiver) -> None:
    receiver.fail_next, receiver.fail_status, receiver.retry_after = 1, 429, "7"
    with pytest.raises(SinkError) as info:
        _am(client, receiver).send([_alert()])
    assert info.value.retriable
    assert info.value.retry_after_s == 7.0


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_not_worth_a_retry(client: httpx.Client, receiver: Receiver, status: int) -> None:
    receiver.fail_next, receiver.fail_status = 1, status
    with pytest.raises(SinkError, match=f"HTTP {status}") as info:
        _am(client, receiver).send([_alert()])
    assert not info.value.retriable
    assert len(receiver.requests) == 1


def test_connection_refused_raises_a_retriable_sink_error(client: httpx.Client) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(SinkError, match="failed") as info:
        AlertmanagerSink(_target(client, url)).send([_alert()])
    assert info.value.retriable


def test_the_queue_retries_with_the_sinks_own_backoff(client: httpx.Client, receiver: Receiver) -> None:
    now = [0.0]
    sink = WebhookSink(_target(client, receiver.url, sink="webhook", backoff_initial_s=0.5, backoff_max_s=2.0))
    queue = DeliveryQueue({"webhook": sink}, max_pending=100, backoff=Backoff(initial_s=10.0, max_s=60.0),
                          clock=lambda: now[0], rng=lambda: 1.0)  # fmt: skip
    receiver.fail_next = 5
    queue.offer([_alert()])
    tries = [now[0]]
    while not queue.idle and now[0] < 100:
        now[0] += 0.25
        before = len(receiver.requests)
        queue.retry()
        if len(receiver.requests) > before:
            tries.append(now[0])
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert queue.idle
    assert len(receiver.requests) == 6
    assert max(gaps) <= 2.0  # the webhook's backoff_max_s, not the queue's default 60 s
    assert gaps == sorted(gaps)  # exponential, then capped


def test_the_queue_waits_as_long_as_retry_after_says_within_the_sinks_cap(
    client: httpx.Client, receiver: Receiver
) -> None:
    now = [0.0]
    sink = AlertmanagerSink(_target(client, receiver.url, backoff_initial_s=0.5, backoff_max_s=5.0))
    queue = DeliveryQueue({"am": sink}, max_pending=100, clock=lambda: now[0], rng=lambda: 1.0)
    receiver.fail_next, receiver.fail_status, receiver.retry_after = 2, 429, "3"
    queue.offer([_alert()])
    now[0] = 2.9
    queue.retry()
    assert len(receiver.requests) == 1  # still waiting as asked
    now[0] = 3.0
    queue.retry()
    assert len(receiver.requests) == 2
    receiver.retry_after = "3600"
    now[0] = 3.0 + 5.0
    queue.retry()
    assert queue.idle  # an hour was asked for; the sink's cap of 5 s won


# --- webhook --------------------------------------------------------------------------------------------------------


def test_the_webhook_posts_each_alert_as_its_json_with_the_configured_headers(
    client: httpx.Client, receiver: Receiver
) -> None:
    cfg = HttpSinkConfig(url=receiver.url + "/hook", headers={"Authorization": "Bearer t0ken"})
    alerts = [_alert("pump-1"), _alert("pump-2")]
    WebhookSink.from_config(cfg, client).send(alerts)
    assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
    assert receiver.bodies() == [json.loads(to_json(a)) for a in alerts]
    assert receiver.requests[0].headers["authorization"] == "Bearer t0ken"


def test_the_webhook_makes_one_attempt_and_does_not_mark_400_retriable(
    client: httpx.Client, receiver: Receiver
) -> None:
    sink = WebhookSink(_target(client, receiver.url, sink="webhook"))
    receiver.fail_next = 1
    with pytest.raises(SinkError) as info:
        sink.send([_alert()])
    assert info.value.retriable
    assert len(receiver.requests) == 1
    receiver.fail_next, receiver.fail_status = 1, 400
    with pytest.raises(SinkError) as info:
        sink.send([_alert()])
    assert not info.value.retriable


# --- an outage end to end -----------------------------------------------------------------------------------------


def test_alerts_queued_during_an_outage_reach_the_webhook_in_order_once_it_recovers(
    client: httpx.Client, receiver: Receiver
) -> None:
    now = [0.0]
    queue = DeliveryQueue(
        {
            "webhook": WebhookSink(
                _target(client, receiver.url, sink="webhook", backoff_initial_s=1.0, backoff_max_s=4.0)
            )
        },
        max_pending=100,
        backoff=Backoff(initial_s=1.0, max_s=4.0),
        clock=lambda: now[0],
    )
    receiver.fail_next = 1000  # down
    queue.offer([_alert("a")])
    queue.offer([_alert("b"), _alert("c")])
    now[0] = 10.0
    queue.retry()
    assert not queue.idle
    assert queue.pending == 3
    receiver.fail_next = 0  # back
    now[0] = 20.0
    queue.retry()
    assert queue.idle
    assert [r.body["stream"] for r in receiver.requests if r.status == 200] == ["a", "b", "c"]
