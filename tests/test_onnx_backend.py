"""scoring.backend = "onnx": `ae-monitor export --onnx` writes the bundle's scoring graph, which gives torch's scores
for every model kind, loads without torch, and stops startup with a message naming model.onnx when it is unusable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from ae_monitor.cli import main
from ae_monitor.config import ModelConfig, TrainingConfig, load_config
from ae_monitor.errors import BundleError
from ae_monitor.model.bundle import Bundle, check_bundle, export_onnx, load_bundle, save_bundle, weights_version
from ae_monitor.model.integrity import KEY_ENV, seal
from ae_monitor.model.linear import LinearMonitor
from ae_monitor.model.networks import build_model
from ae_monitor.model.onnx import ONNX_FILE
from ae_monitor.scoring import scorer_for
from ae_monitor.serve.app import load_routed_bundles, serve

pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed (the Makefile installs it)")

REPO = Path(__file__).resolve().parents[1]
KEY = "0123456789abcdef0123456789abcdef"
# float32 kernels of the two runtimes sum in different orders: measured differences are ~1e-7 relative.
RTOL = 1e-5

VARIANTS = {
    "dense": (ModelConfig(kind="dense", hidden_units=(32, 16)), "mse"),
    "dense, BCE loss": (ModelConfig(kind="dense", hidden_units=(32, 16)), "bce"),
    "conv1d": (ModelConfig(kind="conv1d", conv_channels=(8, 4), kernel_size=3), "mse"),
    "lstm": (ModelConfig(kind="lstm", lstm_hidden_size=16, lstm_layers=2), "mse"),
    "vae": (ModelConfig(kind="vae", hidden_units=(32,)), "mse"),
    "vae scored by its ELBO": (ModelConfig(kind="vae", hidden_units=(32,), vae_score="elbo", vae_beta=0.5), "mse"),
    "interp": (ModelConfig(kind="interp", hidden_units=(32,)), "mse"),
}


def _variant(base: Path, out: Path, model_config: ModelConfig, loss: str) -> Path:
    """The trained sensor bundle with a freshly initialised network of another kind: batch-norm statistics made
    non-trivial, so that the export has to carry them."""
    bundle = load_bundle(base)
    torch.manual_seed(1)
    model = build_model(model_config, bundle.extractor.vector_shape)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    training = TrainingConfig.model_validate({**bundle.training.model_dump(), "loss": loss})
    variant = replace(bundle, model_config=model_config, model=model, training=training, version=weights_version(model))
    return save_bundle(variant, out)


def _vectors(bundle: Bundle, n: int = 2000) -> np.ndarray:
    steps, groups = bundle.extractor.vector_shape
    return np.random.default_rng(7).normal(size=(n, steps * groups)).astype(np.float32)


def _max_rel(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(want - got).max() / max(float(np.abs(want).max()), 1e-12))


@pytest.fixture(scope="module")
def exported(sensor_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "pump"
    shutil.copytree(sensor_bundle, out)
    export_onnx(out)
    return out


@pytest.mark.parametrize("name", VARIANTS)
def test_every_model_kind_scores_the_same_with_onnx_as_with_torch(
    sensor_bundle: Path, tmp_path: Path, name: str
) -> None:
    path = _variant(sensor_bundle, tmp_path / "b", *VARIANTS[name])
    export_onnx(path)
    torch_bundle, onnx_bundle = load_bundle(path), load_bundle(path, backend="onnx")
    assert onnx_bundle.model is None
    assert onnx_bundle.onnx is not None
    data = _vectors(torch_bundle)
    want, got = (
        scorer_for(torch_bundle, batch_size=512).score(data),
        scorer_for(onnx_bundle, batch_size=512).score(data),
    )
    assert _max_rel(want.errors, got.errors) < RTOL
    assert _max_rel(want.group_errors, got.group_errors) < RTOL
    assert _max_rel(scorer_for(torch_bundle).encode(data), scorer_for(onnx_bundle).encode(data)) < RTOL
    assert _max_rel(scorer_for(torch_bundle).reconstruct(data), scorer_for(onnx_bundle).reconstruct(data)) < RTOL


def test_a_group_calibrated_bundle_takes_the_same_max_over_groups(exported: Path) -> None:
    torch_bundle, onnx_bundle = load_bundle(exported), load_bundle(exported, backend="onnx")
    assert torch_bundle.calibration is not None
    scale = tuple(float(v) for v in np.linspace(0.5, 2.0, torch_bundle.extractor.vector_shape[1]))
    calibration = replace(torch_bundle.calibration, aggregation="max", group_scale=scale)
    data = _vectors(torch_bundle)
    want = scorer_for(torch_bundle.with_calibration(calibration)).score(data).errors
    got = scorer_for(onnx_bundle.with_calibration(calibration)).score(data).errors
    assert _max_rel(want, got) < RTOL


def test_scores_over_the_newest_steps_are_the_same_with_onnx_as_with_torch(exported: Path) -> None:
    torch_bundle, onnx_bundle = load_bundle(exported), load_bundle(exported, backend="onnx")
    assert torch_bundle.calibration is not None
    scale = tuple(float(v) for v in np.linspace(0.5, 2.0, torch_bundle.extractor.vector_shape[1]))
    calibration = replace(torch_bundle.calibration, aggregation="max", group_scale=scale, recent_steps=3)
    data = _vectors(torch_bundle)
    want = scorer_for(torch_bundle.with_calibration(calibration)).score(data)
    got = scorer_for(onnx_bundle.with_calibration(calibration)).score(data)
    assert _max_rel(want.errors, got.errors) < RTOL
    assert _max_rel(want.group_errors, got.group_errors) < RTOL
    assert _max_rel(want.errors, scorer_for(torch_bundle).score(data).errors) > 0.01  # it does score differently


def test_the_linear_monitor_joins_the_maximum_the_same_way_with_onnx_as_with_torch(exported: Path) -> None:
    torch_bundle, onnx_bundle = load_bundle(exported), load_bundle(exported, backend="onnx")
    assert torch_bundle.calibration is not None
    steps, groups = torch_bundle.extractor.vector_shape
    scale = tuple(1e3 for _ in range(groups))  # network errors far below 1: the monitor's terms decide
    rows = np.random.default_rng(3).normal(size=(500, groups))
    monitor = LinearMonitor.fit(rows, components=2).calibrated(np.ones((1, 2)), quantile=0.99)
    calibration = replace(torch_bundle.calibration, aggregation="max", group_scale=scale, recent_steps=3,
                          linear=monitor.to_dict())  # fmt: skip
    data = _vectors(torch_bundle)
    want = scorer_for(torch_bundle.with_calibration(calibration)).score(data).errors
    got = scorer_for(onnx_bundle.with_calibration(calibration)).score(data).errors
    assert _max_rel(want, got) < RTOL
    assert np.allclose(want, monitor.score(data, (steps, groups), steps - 3))


def test_the_export_is_sealed_in_the_manifest_and_verifies(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert ONNX_FILE in manifest["files"]
    assert manifest["onnx"]["weights_sha256"] == manifest["files"]["weights.safetensors"]
    assert check_bundle(exported).state == "sealed"


def test_a_bundle_without_model_onnx_is_refused_for_the_onnx_backend_naming_the_file(sensor_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"model\.onnx.*ae-monitor export --onnx") as caught:
        load_bundle(sensor_bundle, backend="onnx")
    assert caught.value.field == ONNX_FILE


def test_an_edited_model_onnx_is_refused_by_its_hash(exported: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(exported, tmp_path / "b")
    (copy / ONNX_FILE).write_bytes((copy / ONNX_FILE).read_bytes()[:-10])
    with pytest.raises(BundleError, match="sha256 mismatch") as caught:
        load_bundle(copy, backend="onnx")
    assert caught.value.field == f"files.{ONNX_FILE}"


def _reseal(root: Path, **changes: object) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(seal(manifest, key=None)))


def test_a_model_onnx_that_is_not_a_model_stops_startup_naming_the_file(exported: Path, tmp_path: Path) -> None:
    import hashlib

    copy = shutil.copytree(exported, tmp_path / "b")
    (copy / ONNX_FILE).write_bytes(b"not a model")
    files = json.loads((copy / "manifest.json").read_text())["files"]
    _reseal(copy, files={**files, ONNX_FILE: hashlib.sha256(b"not a model").hexdigest()})
    with pytest.raises(BundleError, match=r"model\.onnx is not a usable ONNX model") as caught:
        load_bundle(copy, backend="onnx")
    assert caught.value.field == ONNX_FILE


def test_a_graph_exported_from_other_weights_is_refused(exported: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(exported, tmp_path / "b")
    record = json.loads((copy / "manifest.json").read_text())["onnx"]
    _reseal(copy, onnx={**record, "weights_sha256": "0" * 64})
    with pytest.raises(BundleError, match="exported from other weights"):
        load_bundle(copy, backend="onnx")


def test_saving_the_bundle_again_drops_the_graph_so_it_cannot_go_stale(exported: Path, tmp_path: Path) -> None:
    saved = save_bundle(load_bundle(exported), tmp_path / "b")
    assert not (saved / ONNX_FILE).exists()
    with pytest.raises(BundleError, match="ae-monitor export --onnx"):
        load_bundle(saved, backend="onnx")


def test_a_bundle_loaded_for_onnx_has_no_torch_network_to_save(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no torch network"):
        save_bundle(load_bundle(exported, backend="onnx"), tmp_path / "b")


def test_exporting_a_signed_bundle_keeps_it_signed_and_needs_the_key(sensor_bundle: Path, tmp_path: Path) -> None:
    keyed = {KEY_ENV: KEY}
    signed = save_bundle(load_bundle(sensor_bundle, environ={}), tmp_path / "signed", environ=keyed)
    with pytest.raises(BundleError, match="signed"):
        export_onnx(signed, environ={})
    assert not (signed / ONNX_FILE).exists()
    export_onnx(signed, environ=keyed)
    assert check_bundle(signed, environ=keyed).state == "signed"
    assert load_bundle(signed, environ=keyed, backend="onnx").onnx is not None


def test_the_export_command_writes_model_onnx(
    sensor_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = shutil.copytree(sensor_bundle, tmp_path / "b")
    assert main(["export", "--onnx", str(copy)]) == 0
    assert f"wrote {copy / ONNX_FILE}" in capsys.readouterr().out
    assert main(["bundle", "verify", str(copy)]) == 0


def test_serve_loads_its_bundles_for_the_configured_backend(exported: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "serve.toml"
    config_file.write_text(f'[scoring]\nbackend = "onnx"\n\n[[routes]]\nbundle_path = "{exported}"\n')
    bundles, _, _ = load_routed_bundles(load_config(config_file))
    (bundle,) = bundles.values()
    assert bundle.model is None
    assert bundle.onnx is not None


def test_a_daemon_scoring_with_onnx_never_imports_torch_or_the_training_libraries(exported: Path) -> None:
    # A fresh interpreter: what serve imports, the bundle loaded the way serve loads it, one batch through the engine.
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from prometheus_client import CollectorRegistry
        import ae_monitor.cli, ae_monitor.serve.app, ae_monitor.sources.kafka, ae_monitor.sinks.kafka
        from ae_monitor.config import AlertingConfig
        from ae_monitor.engine import Engine
        from ae_monitor.metrics import Metrics
        from ae_monitor.model.bundle import load_bundle
        from ae_monitor.records import SensorRecord
        bundle = load_bundle({str(exported)!r}, backend="onnx")
        engine = Engine(bundle, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()))
        channels = bundle.extractor.group_names
        records = [SensorRecord("s", np.array([1.7e9 + i]), np.full((1, len(channels)), 0.5), channels)
                   for i in range(100)]
        assert engine.process(records).window_count > 0
        heavy = {{"torch", "librosa", "numba", "sklearn", "matplotlib", "skimage", "tqdm"}}
        print(sorted({{m.split(".")[0] for m in sys.modules}} & heavy))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_with_the_onnx_backend_raises_the_alerts_torch_would_through_a_real_broker(
    client_library: str, kafka_bootstrap: str, kafka_topic: Callable[..., str], exported: Path,
    sensor_data: tuple[Path, Path],
) -> None:  # fmt: skip
    from test_serve import _expected_alerts, _interleave, _messages, _produce, _read, _serve_config

    topic = kafka_topic(2)
    tag = topic.rsplit("-", 1)[-1]
    config = _serve_config(kafka_bootstrap, topic, exported, client=client_library, scoring={"backend": "onnx"})
    messages = _interleave(*(_messages(sensor_data[1] / f"pump-{i}.csv", f"pump-{i}", config) for i in (1, 2)))
    expected = _expected_alerts(exported, messages, config)  # the torch engine, offline
    assert {a.status for a in expected} == {"firing", "resolved"}
    stop, registry = threading.Event(), CollectorRegistry()
    thread = threading.Thread(target=serve, args=(config,), kwargs={"registry": registry, "stop": stop})
    thread.start()
    try:
        _produce(kafka_bootstrap, topic, messages)
        wanted = {(a.id, a.status) for a in expected}

        def alerts(seen: list[Any]) -> set[tuple[str, str]]:
            return {(json.loads(m.value)["id"], json.loads(m.value)["status"]) for m in seen}

        assert alerts(_read(kafka_bootstrap, f"alerts-{tag}", lambda seen: wanted <= alerts(seen))) == wanted
    finally:
        stop.set()
        thread.join(timeout=30)
