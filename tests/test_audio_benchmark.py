"""The audio benchmark and its synthetic machine sounds: deterministic, complete, and fast on a small slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ae_monitor.config import Config, FeaturesConfig, LogMelConfig, load_config
from ae_monitor.jobs import machine_sounds
from ae_monitor.jobs.audio_benchmark import (
    METHODS,
    REAL_CLIPS,
    ZScoreDetector,
    clips_of,
    goals,
    real_pairs,
    run_benchmark,
    split_recording,
    summary,
)

REPO = Path(__file__).resolve().parents[1]


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def tiny_recipe() -> Config:
    """The shipped audio config with a few epochs: enough to exercise every path in seconds."""
    shipped = load_config(REPO / "configs" / "audio-dcase.toml")
    return shipped.model_copy(update={"training": shipped.training.model_copy(update={"epochs": 3})})


def test_the_same_machine_spec_always_renders_the_same_samples() -> None:
    spec = machine_sounds.SUITE[3]
    np.testing.assert_array_equal(machine_sounds.normal(spec, 1.5), machine_sounds.normal(spec, 1.5))
    np.testing.assert_array_equal(machine_sounds.abnormal(spec, 1.5), machine_sounds.abnormal(spec, 1.5))


@pytest.mark.parametrize("spec", machine_sounds.SUITE, ids=lambda s: s.name)
def test_every_machine_renders_finite_16_khz_audio_whose_fault_changes_the_sound(
    spec: machine_sounds.MachineSpec,
) -> None:
    normal, abnormal = machine_sounds.normal(spec, 2.0), machine_sounds.abnormal(spec, 2.0)
    assert normal.shape == abnormal.shape == (2 * machine_sounds.SAMPLE_RATE_HZ,)
    assert normal.dtype == np.float32
    assert np.isfinite(normal).all()
    assert np.isfinite(abnormal).all()
    assert 0.01 < rms(normal) < 0.5
    assert not np.allclose(normal, abnormal)


def test_several_faults_are_quieter_than_normal_so_that_inversion_is_tested() -> None:
    quieter = [
        s.name
        for s in machine_sounds.SUITE
        if rms(machine_sounds.abnormal(s, 4.0)) < rms(machine_sounds.normal(s, 4.0))
    ]
    assert len(quieter) >= 3, quieter


def test_the_suite_covers_the_faults_people_listen_for_at_several_snrs() -> None:
    faults = {s.fault for s in machine_sounds.SUITE}
    assert {"bearing", "imbalance", "looseness", "cavitation", "sticking", "leaking", "squeal"} <= faults
    assert len({s.snr_db for s in machine_sounds.SUITE}) >= 3
    assert len({s.seed for s in machine_sounds.SUITE}) == len(machine_sounds.SUITE)


def test_a_recording_trains_on_its_first_60_percent_and_tests_on_the_rest() -> None:
    train, test = split_recording([np.arange(100, dtype=np.float32), np.arange(50, dtype=np.float32)])
    assert [len(t) for t in train] == [60, 30]
    assert [len(t) for t in test] == [40, 20]
    assert train[0][-1] + 1 == test[0][0]


def test_test_streams_are_cut_into_two_second_clips() -> None:
    clips = clips_of([np.zeros(5 * 16000, dtype=np.float32), np.zeros(16000, dtype=np.float32)], 16000)
    assert [len(c) for c in clips] == [32000, 32000, 16000]


def test_missing_real_clips_are_skipped_with_a_note(tmp_path: Path) -> None:
    pairs, notes = real_pairs(tmp_path, FeaturesConfig())
    assert pairs == []
    assert len(notes) == len(REAL_CLIPS)
    assert all("skipped" in note for note in notes)


def test_the_zscore_baseline_scores_a_louder_sound_above_the_sound_it_was_fitted_on() -> None:
    spec = machine_sounds.SUITE[0]
    normal = machine_sounds.normal(spec, 6.0)
    detector = ZScoreDetector(FeaturesConfig(logmel=LogMelConfig(band_scaling="standard")), [normal[:64000]])
    assert detector.clip(4 * normal[64000:]) > detector.clip(normal[64000:])
    assert detector.windows(normal[64000:]).shape == (2,)  # 2 s: windows of 1 s every 0.5 s, all inside


@pytest.mark.shared_data
def test_real_pairs_split_every_mimii_channel_into_a_mono_stream(shared_data: Path) -> None:
    pairs, notes = real_pairs(shared_data / "audio", FeaturesConfig())
    by_name = {p.name: p for p in pairs}
    assert notes == []
    assert len(by_name["mimii-fan"].train) == 8
    assert len(by_name["mimii-fan"].abnormal) == 8
    assert len(by_name["mimii-fan"].train[0]) == 96000
    assert len(by_name["mimii-fan"].normal[0]) == 64000
    assert len(by_name["dcase-pump-id06"].train) == 1
    by_channel = by_name["mimii-fan-by-channel"]
    assert len(by_channel.train) == 5
    assert len(by_channel.normal) == 3
    assert len(by_channel.train[0]) == 160000
    assert "dcase-pump-id06-by-channel" not in by_name


def test_a_small_slice_runs_every_method_and_writes_results_and_plots(tmp_path: Path) -> None:
    specs = [s for s in machine_sounds.SUITE if s.name in ("pump-looseness", "valve-sticking")]
    report = run_benchmark(
        tiny_recipe(), tmp_path, data=None, specs=specs, synthetic_normal_s=8.0, synthetic_abnormal_s=4.0
    )
    written = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert written["machines"].keys() == {"pump-looseness", "valve-sticking"}
    for machine in written["machines"].values():
        assert set(METHODS) <= machine.keys()
        for figures in (machine[m] for m in METHODS):
            assert all(0.0 <= figures[k] <= 1.0 for k in ("window_auc", "window_pauc", "clip_auc", "clip_pauc"))
    assert written["summary"]["synthetic"]["recipe"]["machines"] == 2
    assert "no_inverted_machine" in written["goals"]
    assert report["notes"] == ["real clips: no data folder"]
    assert "| pump-looseness | recipe" in (tmp_path / "results.md").read_text(encoding="utf-8")
    assert (tmp_path / "window_auc.png").is_file()
    assert (tmp_path / "clip_auc.png").is_file()


def test_a_machine_ranked_the_wrong_way_round_fails_the_no_inversion_goal() -> None:
    from ae_monitor.jobs.audio_benchmark import MachineResult

    good = {"window_auc": 1.0, "window_pauc": 1.0, "clip_auc": 1.0, "clip_pauc": 1.0}
    bad = {**good, "window_auc": 0.2}
    results = [MachineResult("a", "synthetic", {"recipe": bad, "dcase2020": good, "zscore": good})]
    verdict = goals(results, summary(results, METHODS))
    assert verdict["no_inverted_machine"] is False
    assert verdict["above_dcase2020"] is False
    assert summary(results, METHODS)["synthetic"]["recipe"]["inverted_share"] == 1.0


def test_the_benchmark_script_benchmarks_the_shipped_audio_config_by_default() -> None:
    from script_loader import load_script

    bench = load_script("bench_audio.py", name="bench_audio")
    assert bench.DEFAULT_CONFIG == REPO / "configs" / "audio-dcase.toml"
