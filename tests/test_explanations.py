"""Explanations: when one channel is faulted, the alerted windows name that channel as their top contributor."""

from __future__ import annotations

import numpy as np
import pytest

from ae_monitor.alerting import AlertPolicy
from ae_monitor.config import config_from_dict
from ae_monitor.jobs.benchmark import fit_file_bundle
from ae_monitor.jobs.data import Signal, score_signal
from ae_monitor.records import WindowScore
from ae_monitor.scoring import scorer_for

CHANNELS = ("vibration", "current", "pressure", "temperature", "flow")
CONFIG = config_from_dict({
    "features": {"kind": "sensor", "sensor": {"window_samples": 10}},
    "model": {"kind": "dense", "hidden_units": [32, 16], "latent_dim": 4},
    "training": {"epochs": 25, "batch_size": 64, "early_stopping_patience": 5},
    "calibration": {"method": "quantile", "quantile": 0.999, "margin": 1.2},
})  # fmt: skip


def _machine(n: int, seed: int) -> np.ndarray:
    """Five channels driven by two shared latent signals, as coupled machine sensors are."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    drivers = np.stack([np.sin(2 * np.pi * t / 40), np.sin(2 * np.pi * t / 97 + 1.0)], axis=1)
    mixing = np.array([[1.0, 0.2], [0.6, 0.8], [-0.5, 1.0], [0.3, -0.7], [0.9, 0.5]])
    return np.asarray(drivers @ mixing.T + 0.05 * rng.normal(size=(n, len(CHANNELS))))


def _inject(values: np.ndarray, channel: int, kind: str, lo: int, hi: int) -> None:
    rng = np.random.default_rng(channel)
    if kind == "offset":
        values[lo:hi, channel] += 1.5
    elif kind == "noise":
        values[lo:hi, channel] += rng.normal(scale=0.8, size=hi - lo)
    else:  # stuck sensor: the value freezes while the others keep moving
        values[lo:hi, channel] = values[lo, channel] + 1.0


@pytest.fixture(scope="module")
def bundle():  # type: ignore[no-untyped-def]
    values = _machine(3000, 0)
    train = Signal("train", values, np.arange(3000.0), CHANNELS)
    return fit_file_bundle(CONFIG, train)


@pytest.mark.parametrize("kind", ["offset", "noise", "stuck"])
def test_top_contributor_of_alerted_windows_is_the_faulted_channel(bundle, kind: str) -> None:  # type: ignore[no-untyped-def]
    hits = total = 0
    for channel in range(len(CHANNELS)):
        values = _machine(600, 10 + channel)
        _inject(values, channel, kind, 300, 400)
        scored = score_signal(bundle, scorer_for(bundle), Signal("s", values, np.arange(600.0), CHANNELS))
        alerted = [w for w in scored.windows if w.score > bundle.threshold]
        assert alerted, f"{kind} fault on {CHANNELS[channel]} raised no alert"
        hits += sum(int(np.argmax(w.contributions)) == channel for w in alerted)
        total += len(alerted)
    assert hits / total >= 0.9


def test_alerts_name_the_faulted_channel_first(bundle) -> None:  # type: ignore[no-untyped-def]
    values = _machine(600, 99)
    _inject(values, 2, "offset", 300, 400)
    scored = score_signal(bundle, scorer_for(bundle), Signal("s", values, np.arange(600.0), CHANNELS))
    policy = AlertPolicy(CONFIG.alerting, bundle_name="b", bundle_version="v", group_names=CHANNELS,
                         calibration=bundle.calibration)  # fmt: skip
    state, alerts = policy.new_state(), []
    for w in scored.windows:
        window = WindowScore("s", "b", w.start, w.end, w.score, bundle.threshold, w.contributions)
        alerts += policy.update(state, window, now_s=w.end)
    assert alerts
    assert alerts[0].top_contributors[0][0] == "pressure"
