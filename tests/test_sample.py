"""Generation: a variational bundle decodes codes drawn from N(0, I) into synthetic normal windows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ae_monitor.cli import main
from ae_monitor.config import config_from_dict
from ae_monitor.errors import BundleError
from ae_monitor.jobs.demo import DEMO_CONFIG
from ae_monitor.jobs.sample import sample_vectors, write_samples
from ae_monitor.jobs.train import train_bundle
from ae_monitor.model.bundle import load_bundle


@pytest.fixture(scope="module")
def vae_bundle(sensor_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = config_from_dict({**DEMO_CONFIG, "model": {"kind": "vae", "hidden_units": [32], "latent_dim": 4},
                               "training": {**DEMO_CONFIG["training"], "epochs": 3}})  # fmt: skip
    out = tmp_path_factory.mktemp("vae") / "vae"
    train_bundle(config, [sensor_data[0]], out, progress=False)
    return out


def test_vae_samples_have_the_window_shape_are_finite_and_repeat_with_the_seed(vae_bundle: Path) -> None:
    bundle = load_bundle(vae_bundle)
    samples = sample_vectors(bundle, 7, seed=3)
    assert samples.shape == (7, 30 * 4)
    assert np.isfinite(samples).all()
    np.testing.assert_array_equal(samples, sample_vectors(bundle, 7, seed=3))
    assert not np.array_equal(samples, sample_vectors(bundle, 7, seed=4))


def test_non_variational_bundles_are_refused(sensor_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"only variational bundles \(model.kind = \"vae\"\)"):
        sample_vectors(load_bundle(sensor_bundle), 3)


def test_samples_are_written_as_vectors_or_as_raw_sensor_rows(vae_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(vae_bundle)
    samples = sample_vectors(bundle, 2)
    vectors = load_file(str(write_samples(bundle, samples, tmp_path / "s.safetensors")))["vectors"]
    assert vectors.shape == (2, 30, 4)
    with write_samples(bundle, samples, tmp_path / "s.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["window", "step", *bundle.extractor.group_names]
    assert len(rows) == 1 + 2 * 30


def test_sample_command_writes_the_file_and_refuses_other_bundles(
    vae_bundle: Path, sensor_bundle: Path, tmp_path: Path
) -> None:
    assert main(["-q", "sample", "--bundle", str(vae_bundle), "-n", "4", "--out", str(tmp_path / "s.csv")]) == 0
    assert main(["-q", "sample", "--bundle", str(sensor_bundle), "-n", "4", "--out", str(tmp_path / "x.csv")]) == 2
