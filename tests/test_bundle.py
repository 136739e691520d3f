"""Model bundles: atomic, checksummed, no pickle; refused with the field named when anything is off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ae_monitor.config import FeaturesConfig
from ae_monitor.errors import BundleError
from ae_monitor.model.bundle import CALIBRATION_SCORES, MANIFEST, SCHEMA_VERSION, WEIGHTS, load_bundle, save_bundle
from ae_monitor.model.integrity import seal


@pytest.fixture
def bundle_copy(sensor_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sensor_bundle, tmp_path / "copy"))


def _edit_manifest(path: Path, **changes: object) -> None:
    """Change top-level fields and seal the manifest again: what a faulty writer would produce, which the checks
    after the digest must still catch (tests/test_bundle_integrity.py covers edits that are not sealed again)."""
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(seal(manifest, key=None)))


def test_round_trip_keeps_weights_features_and_calibration(sensor_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(sensor_bundle)
    again = load_bundle(save_bundle(bundle, tmp_path / "again"))
    for (key, a), (_, b) in zip(bundle.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    assert again.calibration == bundle.calibration
    assert again.extractor.to_manifest() == bundle.extractor.to_manifest()
    assert (again.name, again.version) == (bundle.name, bundle.version)


def test_manifest_records_provenance(sensor_bundle: Path) -> None:
    manifest = json.loads((sensor_bundle / MANIFEST).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert set(manifest["files"]) == {WEIGHTS, CALIBRATION_SCORES}
    assert manifest["torch_version"] == torch.__version__
    calibration = manifest["calibration"]
    for key in ("threshold", "method", "parameters", "n_samples", "data_sha256", "created_at"):
        assert key in calibration
    assert "mean" in json.dumps(manifest["feature_state"])


def test_tampered_weights_are_refused(bundle_copy: Path) -> None:
    with (bundle_copy / WEIGHTS).open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(bundle_copy)


def test_pickled_weights_are_refused(bundle_copy: Path) -> None:
    (bundle_copy / WEIGHTS).unlink()
    torch.save({"w": torch.zeros(2)}, bundle_copy / "weights.pt")  # a pickle
    _edit_manifest(bundle_copy, files={"weights.pt": "0" * 64})
    with pytest.raises(BundleError, match="no pickled weights"):
        load_bundle(bundle_copy)


def test_extra_files_in_the_bundle_are_refused(bundle_copy: Path) -> None:
    (bundle_copy / "thresholds.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match="unexpected or missing files"):
        load_bundle(bundle_copy)


def test_unknown_schema_version_is_refused(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, schema_version=99)
    with pytest.raises(BundleError, match="schema_version: unsupported schema version 99"):
        load_bundle(bundle_copy)


def test_mismatching_feature_config_names_the_field(sensor_bundle: Path) -> None:
    bundle = load_bundle(sensor_bundle)
    other = FeaturesConfig(kind="sensor", sensor=bundle.features.sensor.model_copy(update={"window_samples": 17}))
    with pytest.raises(BundleError, match=r"features\.sensor\.window_samples"):
        load_bundle(sensor_bundle, expected_features=other)


def test_invalid_model_config_in_manifest_names_the_field(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["model"]["latent_dim"] = -1
    (bundle_copy / MANIFEST).write_text(json.dumps(seal(manifest, key=None)))
    with pytest.raises(BundleError, match=r"model\.latent_dim"):
        load_bundle(bundle_copy)


def test_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "nowhere")


def test_saving_over_an_existing_bundle_replaces_it_whole(sensor_bundle: Path, tmp_path: Path) -> None:
    target = Path(shutil.copytree(sensor_bundle, tmp_path / "b"))
    bundle = load_bundle(target)
    save_bundle(bundle, target)
    assert sorted(p.name for p in target.iterdir()) == sorted([MANIFEST, WEIGHTS, CALIBRATION_SCORES])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert load_bundle(target).version == bundle.version


def test_calibration_scores_travel_with_the_bundle(sensor_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(sensor_bundle)
    assert bundle.calibration is not None
    assert bundle.calibration_scores is not None
    assert len(bundle.calibration_scores) == bundle.calibration.n_samples
    again = load_bundle(save_bundle(bundle, tmp_path / "again"))
    assert again.calibration_scores is not None
    assert (again.calibration_scores == bundle.calibration_scores).all()
