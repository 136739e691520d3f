"""The Python API (ae_monitor/api.py): the examples of docs/python-api.md run as doctests, as do the doctests of
the package's modules; DataFrames train and score like arrays."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest

import ae_monitor
from ae_monitor.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SENSOR = {
    "features": {"kind": "sensor", "sensor": {"window_samples": 10}},
    "model": {"kind": "dense", "hidden_units": [8], "latent_dim": 2},
    "training": {"epochs": 2},
    "calibration": {"method": "quantile", "quantile": 0.99},
}


def test_the_examples_of_docs_python_api_md_pass() -> None:
    result = doctest.testfile(str(ROOT / "docs" / "python-api.md"), module_relative=False,
                              optionflags=doctest.NORMALIZE_WHITESPACE)  # fmt: skip
    assert result.attempted > 10
    assert result.failed == 0


@pytest.mark.parametrize("module", ["ae_monitor.jobs.data", "ae_monitor.sinks.jsonl", "ae_monitor.sinks.alertmanager"])
def test_the_doctests_of_public_helpers_pass(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0


def _normal(n: int) -> np.ndarray:
    t = np.arange(n)
    load = np.sin(2 * np.pi * t / 50)
    return np.column_stack([load, 2 * load + 0.01 * np.random.default_rng(0).normal(size=n)])


def test_a_dataframe_trains_and_scores_by_its_column_names() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(_normal(600), columns=["current", "pressure"])
    detector = ae_monitor.train(frame, SENSOR)
    assert detector.channels == ("current", "pressure")
    swapped = frame[["pressure", "current"]].tail(100)
    assert np.allclose(detector.score(swapped).score, detector.score(frame.tail(100).to_numpy()).score)


def test_several_arrays_are_separate_recordings_and_the_bundle_is_written_to_out(tmp_path: Path) -> None:
    detector = ae_monitor.train([_normal(400), _normal(400)], SENSOR, out=tmp_path / "b", name="two")
    assert ae_monitor.load(tmp_path / "b").bundle.extra["training_files"] == ["input-0000", "input-0001"]
    assert detector.bundle.name == "two"


def test_scoring_an_array_shorter_than_a_window_gives_no_windows_and_a_wrong_shape_is_refused() -> None:
    detector = ae_monitor.train(_normal(400), SENSOR)
    assert len(detector.score(_normal(5))) == 0
    with pytest.raises(DataError, match="3 channel names for 2 columns"):
        detector.score(_normal(50), channels=["a", "b", "c"])


def test_mono_audio_arrays_train_and_score_with_a_share_per_mel_band() -> None:
    t = np.arange(16000 * 3) / 16000
    hum = (0.3 * np.sin(2 * np.pi * 120 * t)).astype(np.float32)
    config = {"features": {"kind": "logmel", "logmel": {"n_mels": 32, "score_window_s": 0.25, "score_hop_s": 0.125}},
              "model": {"hidden_units": [16], "latent_dim": 4}, "training": {"epochs": 2, "calibration_fraction": 0.3},
              "calibration": {"method": "quantile"}}  # fmt: skip
    detector = ae_monitor.train([hum, hum], config, name="hum")
    scores = detector.score(hum)
    assert len(scores) > 0
    assert scores.contributions.shape == (len(scores), 32)
    assert int(scores.end[-1]) <= len(hum)
