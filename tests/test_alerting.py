"""Alert decisions: k-of-n entry, hysteresis exit, minimum duration, cooldown, deterministic ids, restartable state."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from ae_monitor.alerting import AlertPolicy, StreamAlertState, alert_id
from ae_monitor.config import AlertingConfig, CalibrationConfig
from ae_monitor.errors import DataError, RecordError
from ae_monitor.records import Alert, WindowScore
from ae_monitor.threshold import Calibration, calibrate

START_S = 100.0
HOP_S = 0.5
LENGTH_S = 1.0
GROUPS = ("low", "mid", "high")
CALIBRATION = calibrate(
    np.linspace(0.0, 1.0, 1001), CalibrationConfig(method="quantile"), window_hop_s=HOP_S, created_at="2025-01-01"
)


def _windows(
    scores: Sequence[float], *, stream: str = "pump-1", contributions: tuple[float, ...] = (0.5, 0.3, 0.2)
) -> list[WindowScore]:
    return [
        WindowScore(stream, "bundle", START_S + i * HOP_S, START_S + i * HOP_S + LENGTH_S, s, 1.0, contributions)
        for i, s in enumerate(scores)
    ]


def _policy(calibration: Calibration = CALIBRATION, version: str = "7", **cfg: float) -> AlertPolicy:
    return AlertPolicy(
        AlertingConfig.model_validate(cfg),
        bundle_name="bundle",
        bundle_version=version,
        group_names=GROUPS,
        calibration=calibration,
    )


def _feed(policy: AlertPolicy, windows: Sequence[WindowScore], state: StreamAlertState | None = None) -> list[Alert]:
    state = policy.new_state() if state is None else state
    return [alert for w in windows for alert in policy.update(state, w, now_s=w.end_s + 0.25)]


def _fired_at(policy: AlertPolicy, scores: Sequence[float]) -> list[tuple[int, str]]:
    """(window index, status) of every alert the scores produce."""
    state = policy.new_state()
    return [(i, a.status) for i, w in enumerate(_windows(scores)) for a in policy.update(state, w, now_s=w.end_s)]


def test_k_of_n_fires_at_the_kth_anomalous_window_within_n() -> None:
    policy = _policy(k=3, n=5)
    assert _fired_at(policy, [2, 0, 2, 0, 2, 2]) == [(4, "firing")]
    (alert,) = _feed(policy, _windows([2, 0, 2, 0, 2]))
    assert alert.event_time_s == START_S


def test_a_single_spike_does_not_fire_with_k2_n3() -> None:
    assert _fired_at(_policy(k=2, n=3), [0, 5, 0, 0, 0, 0]) == []


def test_anomalous_windows_further_apart_than_n_do_not_add_up() -> None:
    assert _fired_at(_policy(k=2, n=3), [5, 0, 0, 5, 0, 0, 5]) == []


def test_k_of_n_alert_starts_at_the_first_anomalous_window_of_its_run() -> None:
    # The spike at 0 lapses (no anomalous window in the next 3); the run that fires starts at window 4.
    (alert,) = _feed(_policy(k=2, n=3), _windows([5, 0, 0, 0, 5, 0, 5]))
    assert alert.event_time_s == START_S + 4 * HOP_S
    assert alert.id == alert_id("pump-1", START_S + 4 * HOP_S, "7")


def test_hysteresis_keeps_firing_between_exit_and_enter() -> None:
    policy = _policy(exit_ratio=0.8)
    assert _fired_at(policy, [2, 0.9, 0.8, 0.85, 0.5, 0.1]) == [(0, "firing"), (4, "resolved")]


def test_resolution_carries_the_same_id_and_the_episode_summary() -> None:
    firing, resolved = _feed(_policy(exit_ratio=0.8), _windows([2, 3, 0.9, 1.5, 0.1]))
    assert resolved.id == firing.id
    assert (firing.peak_score, firing.mean_score, firing.ends_at_s) == (2, 2, None)
    assert resolved.peak_score == 3
    assert resolved.mean_score == pytest.approx((2 + 3 + 1.5) / 3)
    assert resolved.ends_at_s == START_S + 4 * HOP_S + LENGTH_S
    assert resolved.event_time_s == firing.event_time_s == START_S
    assert resolved.severity == 3.0
    assert resolved.threshold == 1.0


def test_alert_times_and_bundle_fields() -> None:
    (alert,) = _feed(_policy(k=2, n=2), _windows([0, 2, 2]))
    assert alert.status == "firing"
    assert alert.stream == "pump-1"
    assert (alert.bundle_name, alert.bundle_version) == ("bundle", "7")
    assert alert.event_time_s == START_S + HOP_S
    assert alert.detection_time_s == START_S + 2 * HOP_S + LENGTH_S + 0.25


def test_tail_probability_is_the_calibrations_for_the_peak() -> None:
    _, resolved = _feed(_policy(), _windows([1.001, 1.002, 0.1]))
    assert resolved.tail_probability == CALIBRATION.tail_probability(1.002)
    assert 0 < resolved.tail_probability < 0.01


def test_top_contributors_come_from_the_peak_window_sorted_and_rounded() -> None:
    policy = _policy(top_contributors=2)
    state = policy.new_state()
    low = _windows([2.0], contributions=(0.6, 0.3, 0.1))[0]
    peak = _windows([2.0, 5.0], contributions=(0.123456, 0.2, 0.676544))[1]
    end = _windows([2.0, 5.0, 0.0])[2]
    alerts = [a for w in (low, peak, end) for a in policy.update(state, w, now_s=0.0)]
    assert alerts[0].top_contributors == (("low", 0.6), ("mid", 0.3))
    assert alerts[1].top_contributors == (("high", 0.6765), ("mid", 0.2))


def test_no_contributors_when_disabled_or_absent() -> None:
    (alert,) = _feed(_policy(top_contributors=0), _windows([2]))
    assert alert.top_contributors == ()
    (alert,) = _feed(_policy(), _windows([2], contributions=()))
    assert alert.top_contributors == ()


def test_contributions_that_do_not_match_the_groups_are_a_record_error() -> None:
    policy = _policy()
    state = policy.new_state()
    with pytest.raises(RecordError, match="2 contributions but bundle 'bundle' has 3") as info:
        policy.update(state, _windows([2], contributions=(0.5, 0.5))[0], now_s=0.0)
    assert info.value.reason == "contributions_mismatch"
    assert state == policy.new_state()


def test_min_duration_waits_for_the_run_to_span_it() -> None:
    policy = _policy(min_duration_s=2.0)
    # A run from 100.0 needs a window ending at 102.0 (index 2).
    assert _fired_at(policy, [2, 2, 2, 2]) == [(2, "firing")]
    # A normal window breaks the run; the next run starts at index 3 (101.5) and needs an end of 103.5 (index 5).
    assert _fired_at(policy, [2, 2, 0, 2, 2, 2]) == [(5, "firing")]


def test_cooldown_holds_back_a_new_alert_after_a_resolution() -> None:
    policy = _policy(cooldown_s=5.0)
    # Resolved by window 1 (ends 101.5); window 11 is the first to end >= 106.5.
    assert _fired_at(policy, [2, 0] + [2] * 12) == [(0, "firing"), (1, "resolved"), (11, "firing")]
    alerts = _feed(policy, _windows([2, 0] + [2] * 12))
    assert alerts[2].event_time_s == START_S + 2 * HOP_S
    assert alerts[2].id != alerts[0].id


def test_without_cooldown_the_look_back_starts_empty_after_a_resolution() -> None:
    assert _fired_at(_policy(k=2, n=3), [2, 2, 0.1, 2, 2]) == [(1, "firing"), (2, "resolved"), (4, "firing")]


def test_replaying_the_same_windows_gives_the_same_alerts() -> None:
    windows = _windows([0, 2, 0.95, 3, 0.1, 0, 2, 2, 0])
    first = _feed(_policy(k=2, n=3), windows)
    assert first
    assert _feed(_policy(k=2, n=3), windows) == first
    assert [a.id for a in _feed(_policy(k=2, n=3, version="8"), windows)] != [a.id for a in first]


def test_alert_id_is_a_short_hash_of_stream_start_and_version() -> None:
    assert alert_id("s", 1.0, "v") == alert_id("s", 1.0000000001, "v")
    assert (
        len({alert_id("s", 1.0, "v"), alert_id("t", 1.0, "v"), alert_id("s", 2.0, "v"), alert_id("s", 1.0, "w")}) == 4
    )
    assert len(alert_id("s", 1.0, "v")) == 16


def test_windows_already_processed_are_ignored() -> None:
    policy = _policy(k=2, n=2)
    state = policy.new_state()
    spike = _windows([5])[0]
    assert policy.update(state, spike, now_s=0.0) == []
    assert policy.update(state, spike, now_s=0.0) == []
    assert state.recent == [True]


@pytest.mark.parametrize("split", range(12))
def test_state_restored_from_json_continues_identically(split: int) -> None:
    cfg = {"k": 2, "n": 3, "exit_ratio": 0.8, "min_duration_s": 1.0, "cooldown_s": 1.0}
    windows = _windows([0, 2, 0, 2, 0.9, 3, 0.5, 2, 2, 2, 2, 0])
    uninterrupted = _feed(_policy(**cfg), windows)
    policy = _policy(**cfg)
    state = policy.new_state()
    before = _feed(policy, windows[:split], state)
    restored = StreamAlertState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert before + _feed(_policy(**cfg), windows[split:], restored) == uninterrupted
    assert [a.status for a in uninterrupted] == ["firing", "resolved", "firing", "resolved"]


def test_state_from_another_version_is_refused() -> None:
    d = StreamAlertState().to_dict()
    d["version"] = 99
    with pytest.raises(DataError, match="version 99"):
        StreamAlertState.from_dict(d)


def test_malformed_state_is_a_data_error() -> None:
    d = StreamAlertState().to_dict()
    del d["recent"]
    with pytest.raises(DataError, match="malformed"):
        StreamAlertState.from_dict(d)


def test_streams_have_independent_states() -> None:
    policy = _policy(k=2, n=2)
    a, b = policy.new_state(), policy.new_state()
    wa = _windows([2, 2], stream="a")
    wb = _windows([2, 0], stream="b")
    alerts = [x for i in range(2) for s, w in ((a, wa[i]), (b, wb[i])) for x in policy.update(s, w, now_s=0.0)]
    assert [(x.stream, x.status) for x in alerts] == [("a", "firing")]


def test_anomalous_windows_less_than_n_apart_chain_into_one_run() -> None:
    # Windows 0, 3 and 6 each have the previous one in their 3-window look-back: the run that fires starts at 0.
    (alert,) = _feed(_policy(k=2, n=3), _windows([5, 0, 0, 5, 0, 0, 5, 5]))
    assert alert.event_time_s == START_S


# --- skip_quiet: a quiet stream's non-anomalous windows in one step -------------------------------------------------

SKIP_CONFIGS = [
    {"k": 1, "n": 1},
    {"k": 2, "n": 3},
    {"k": 3, "n": 5, "exit_ratio": 0.8, "cooldown_s": 2.0},
    {"k": 2, "n": 4, "min_duration_s": 1.0},
]
QUIET_PREFIXES = [
    [],  # a new stream
    [0.2, 0.5],  # a partly filled look-back
    [0.1] * 8,  # a full look-back
    [5, 0, 0, 0, 0, 0],  # a spike that has lapsed
    [5, 5, 5, 0.1],  # an alert that fired and resolved
]


def _state_after(policy: AlertPolicy, windows: Sequence[WindowScore]) -> StreamAlertState:
    state = policy.new_state()
    _feed(policy, windows, state)
    return state


@pytest.mark.parametrize("cfg", SKIP_CONFIGS, ids=[str(c) for c in SKIP_CONFIGS])
@pytest.mark.parametrize("prefix", QUIET_PREFIXES, ids=[str(p) for p in QUIET_PREFIXES])
@pytest.mark.parametrize("count", [1, 2, 4, 9])
def test_skip_quiet_leaves_the_state_that_feeding_the_windows_one_by_one_leaves(
    cfg: dict[str, float], prefix: list[float], count: int
) -> None:
    policy = _policy(**cfg)
    quiet_scores = [0.0, 0.95, 1.0, 0.3, 0.85, 0.5, 0.99, 0.0, 0.7][:count]  # none above the threshold (1.0)
    afterwards = [2, 2, 2, 0.9, 0.1, 2, 0.5, 2, 2, 2, 0.1]
    windows = _windows([*prefix, *quiet_scores, *afterwards])
    cut = len(prefix)
    head, quiet, tail = windows[:cut], windows[cut : cut + count], windows[cut + count :]
    one_by_one = _state_after(policy, head)
    assert not one_by_one.firing
    assert not any(one_by_one.recent)
    skipped = _state_after(policy, head)
    assert policy.skip_quiet(skipped, count, first_end_s=quiet[0].end_s, last_end_s=quiet[-1].end_s)
    assert _feed(policy, quiet, one_by_one) == []
    assert skipped.to_dict() == one_by_one.to_dict()
    assert _feed(policy, tail, skipped) == _feed(policy, tail, one_by_one)


def _refuses_and_keeps(policy: AlertPolicy, state: StreamAlertState, count: int, first: float, last: float) -> bool:
    before = state.to_dict()
    applied = policy.skip_quiet(state, count, first_end_s=first, last_end_s=last)
    assert state.to_dict() == before
    return not applied


def test_skip_quiet_refuses_while_the_stream_fires() -> None:
    policy = _policy(k=1, n=1, exit_ratio=0.5)
    windows = _windows([2, 0.1, 0.2])
    state = _state_after(policy, windows[:1])
    assert state.firing
    assert _refuses_and_keeps(policy, state, 2, windows[1].end_s, windows[2].end_s)
    # Fed one by one, window 1 (below exit) resolves the alert: skipping it would have lost the resolution.
    assert [a.status for a in _feed(policy, windows[1:], state)] == ["resolved"]


def test_skip_quiet_refuses_while_the_look_back_holds_an_anomalous_window() -> None:
    policy = _policy(k=2, n=3)
    windows = _windows([0, 5, 0, 0, 0, 0])
    state = _state_after(policy, windows[:3])
    assert state.recent == [False, True, False]
    assert _refuses_and_keeps(policy, state, 3, windows[3].end_s, windows[5].end_s)
    _feed(policy, windows[3:5], state)  # the spike leaves the look-back: now the shortcut applies
    assert policy.skip_quiet(state, 1, first_end_s=windows[5].end_s, last_end_s=windows[5].end_s)
    assert (state.recent, state.episode) == ([False, False, False], None)


def test_skip_quiet_refuses_windows_that_do_not_end_after_the_last_one_processed() -> None:
    policy = _policy(k=2, n=3)
    windows = _windows([0, 0, 0, 0])
    state = _state_after(policy, windows[:2])
    assert state.last_end_s == windows[1].end_s
    assert _refuses_and_keeps(policy, state, 3, windows[1].end_s, windows[3].end_s)  # a replay of window 1
    assert _refuses_and_keeps(policy, state, 4, windows[0].end_s, windows[3].end_s)
    assert policy.skip_quiet(state, 2, first_end_s=windows[2].end_s, last_end_s=windows[3].end_s)
    assert (state.recent, state.last_end_s) == ([False, False, False], windows[3].end_s)
