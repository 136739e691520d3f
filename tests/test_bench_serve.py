"""Smoke test of scripts/bench_serve.py: a --quick run against the session broker prints every row and exits 0."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_serve.py", name="_bench_serve")


def test_quick_run_prints_every_row_for_each_client_side_by_side_and_exits_0(
    bench: ModuleType, kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    code = bench.main(["--quick", "--bootstrap", kafka_bootstrap, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = printed.splitlines()
    clients = bench.default_clients()
    assert clients == bench.CLIENTS  # confluent-kafka is a dependency: both are measured by default
    expected = [name + bench.client_suffix(client, clients) for client in clients for name in bench.ROWS]
    for name in expected:
        assert any(line.startswith(name) for line in lines), f"row {name!r} missing:\n{printed}"
    figures = json.loads(out.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    names = [row["name"] for row in figures["rows"]]
    assert sorted(names) == sorted([*expected, bench.ROW_SPEEDUP + bench.client_suffix("confluent", clients)])
    values = {row["name"]: row["value"] for row in figures["rows"]}
    assert all(values[bench.ROW_CEILING + bench.client_suffix(c, clients)] > 0 for c in clients)
    assert values[bench.ROW_RSS_REST] > 0
    side = {line["figure"]: line for line in figures["side_by_side"]}
    assert set(side["serve / its client's ceiling"]["values"]) == set(clients)
    assert "clients side by side" in printed


def _plan(bench: ModuleType) -> Any:
    """Two streams of 20 rows sent 10 ms apart, appended 5 ms after; stream 0 has a fault onset at row 8.

    With k = 3, the onset's alert is fired by row 10 (the 3rd window containing the fault)."""
    plan = bench.LatencyPlan([b"pump-0000", b"pump-0001"], [[b"{}"] * 20] * 2, [{8}, set()], k=3)
    for row in range(20):
        for stream in (0, 1):
            plan.sent_ts[stream].append(1000.0 + row * 0.02 + stream * 0.01)
    plan.appended[(0, 10)] = plan.sent_ts[0][10] + 0.005
    return plan


def test_alerts_are_paired_with_the_record_that_fired_them(bench: ModuleType) -> None:
    plan = _plan(bench)
    window = 4  # the window ending at the onset (row 8) starts at row 5
    sent = plan.sent_ts[0][10]
    alert = {"id": "a", "stream": "pump-0000", "status": "firing", "event_time_s": plan.sent_ts[0][5]}
    false_alarm = {"id": "b", "stream": "pump-0001", "status": "firing", "event_time_s": plan.sent_ts[1][3]}
    alerts = [(sent + 0.050, {**alert, "detection_time_s": sent + 0.020}), (sent, false_alarm)]
    result = bench.match_alerts(plan, alerts, window=window, waited_until=sent + 5)
    assert result.expected == result.received == 1
    assert result.append_to_alert_ms == pytest.approx([45.0])
    assert result.send_to_alert_ms == pytest.approx([50.0])
    assert result.append_to_detection_ms == pytest.approx([15.0])
    assert (result.masked, result.unmatched_faulty, result.unmatched_normal) == (0, 0, 1)


def test_an_alert_that_never_came_counts_as_a_lower_bound(bench: ModuleType) -> None:
    plan = _plan(bench)
    result = bench.match_alerts(plan, [], window=4, waited_until=plan.sent_ts[0][10] + 2.0)
    assert (result.expected, result.received) == (1, 0)
    assert result.send_to_alert_ms == pytest.approx([2000.0])
    assert result.append_to_alert_ms == pytest.approx([1995.0])
    assert result.append_to_detection_ms == []


def test_an_onset_inside_an_episode_already_firing_is_masked_not_expected(bench: ModuleType) -> None:
    plan = _plan(bench)
    early = {"id": "c", "stream": "pump-0000", "status": "firing", "event_time_s": plan.sent_ts[0][2]}
    resolved = {"id": "c", "stream": "pump-0000", "status": "resolved", "ends_at_s": plan.sent_ts[0][12]}
    alerts = [(plan.sent_ts[0][5], early), (plan.sent_ts[0][12], resolved)]
    result = bench.match_alerts(plan, alerts, window=4, waited_until=plan.sent_ts[0][19])
    assert (result.expected, result.received, result.masked, result.unmatched_faulty) == (0, 0, 1, 1)
    assert result.append_to_alert_ms == []
    resolved_before = {**resolved, "ends_at_s": plan.sent_ts[0][7]}  # resolved before the onset: it fires again
    result = bench.match_alerts(plan, [alerts[0], (0.0, resolved_before)], window=4, waited_until=1.0e4)
    assert (result.expected, result.received, result.masked) == (1, 0, 0)


def test_the_trace_splits_an_alerts_latency_at_each_stage_of_serve(bench: ModuleType, tmp_path: Path) -> None:
    plan = _plan(bench)
    appended = plan.appended[(0, 10)]
    alert = {"id": "a", "stream": "pump-0000", "status": "firing", "event_time_s": plan.sent_ts[0][5],
             "detection_time_s": appended + 0.040}  # fmt: skip
    at = [appended + s for s in (0.010, 0.030, 0.050, 0.055, 0.060)]  # poll start, poll end, submit, acked, received
    events = [
        ("poll", appended - 0.050, appended - 0.040, 100),  # an earlier micro-batch, before the record was appended
        ("poll", at[0], at[1], 2500),
        ("gc", at[1], at[1] + 0.002, 0),
        ("submit", at[2], at[2] + 0.001, ["a:firing"]),
        ("ack", at[2], at[3], ["a:firing"]),
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    found = bench.trace_breakdown(trace, plan, [(at[4], alert)], window=4)
    stages = {name: values[0] for name, values in found["stages_ms"].items()}
    expected = {"append->poll start": 10.0, "in poll": 20.0, "poll->detection": 10.0, "detection->submit": 10.0,
                "submit->acked": 5.0, "acked->received": 5.0}  # fmt: skip
    assert stages == pytest.approx(expected)
    assert sum(stages.values()) == pytest.approx(1000 * (at[4] - appended))
    assert found["alert_batch_rows"] == [2500]
    assert found["gc_ms"] == pytest.approx([2.0])
