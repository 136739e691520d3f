"""The bundle registry on a real MLflow server (sqlite backend, started here): versions, aliases, rollback,
provenance, the CLI, and serve's loop following an alias. Skipped when the `mlflow` extra is not installed."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve_loop import _daemon

from ae_monitor.cli import main
from ae_monitor.errors import RegistryError
from ae_monitor.model.bundle import load_bundle, save_bundle
from ae_monitor.registry import AliasRef, BundleRegistry, open_registry

pytest.importorskip("mlflow", reason="the `mlflow` extra is not installed (pip install -e '.[mlflow]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local `mlflow server` with a sqlite store and its own artifact folder, for this module."""
    home, port = tmp_path_factory.mktemp("mlflow"), _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
               "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120  # the first start migrates the sqlite schema: ~20 s on two busy cores
            while True:
                assert server.poll() is None, (home / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def registry(mlflow_url: str, tmp_path: Path) -> BundleRegistry:
    return open_registry(mlflow_url, environ={"AE_MONITOR_REGISTRY_CACHE": str(tmp_path / "cache")})


def _model(request: pytest.FixtureRequest) -> str:
    """A model name of its own per test: the server lives for the whole module."""
    return request.node.name.removeprefix("test_")[:60]


def test_versions_aliases_rollback_and_provenance_live_in_mlflow(
    registry: BundleRegistry, sensor_bundle: Path, request: pytest.FixtureRequest
) -> None:
    model = _model(request)
    first = registry.register(model, sensor_bundle, data_span=("2026-01-01", "2026-01-08"), by="ops@test")
    second = registry.register(model, sensor_bundle, parent=first.number, metrics={"f1": 0.9})
    assert (first.number, second.number) == (1, 2)
    assert first.provenance["registered_by"] == "ops@test"
    assert first.provenance["training"]["data_span"] == {"start": "2026-01-01", "end": "2026-01-08"}
    assert first.provenance["calibration"]["threshold"] == pytest.approx(load_bundle(sensor_bundle).threshold)
    assert (second.provenance["parent"], second.provenance["metrics"]) == (1, {"f1": 0.9})
    assert registry.add_metrics(model, 2, {"shadow_far": 0.01}).provenance["metrics"] == {"f1": 0.9, "shadow_far": 0.01}

    registry.promote(model, 1, "production")
    registry.promote(model, 2, "production", reason="shadow ok")
    resolved = registry.resolve(model, "production")
    assert resolved.number == 2
    assert load_bundle(resolved.bundle_path).version == load_bundle(sensor_bundle).version  # downloaded, verified
    assert registry.rollback(model, "production").version == 1
    alias = registry.alias(model, "production")
    assert [(m["action"], m["from"], m["to"]) for m in alias.moves] == [
        ("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1),
    ]  # fmt: skip
    assert alias.moves[1]["reason"] == "shadow ok"
    with pytest.raises(RegistryError, match=rf"^model '{model}' alias 'production': has no earlier version"):
        registry.rollback(model, "production")
    assert [v.number for v in registry.versions(model)] == [1, 2]
    assert model in registry.models()


def test_errors_name_the_model_version_or_alias(
    registry: BundleRegistry, sensor_bundle: Path, request: pytest.FixtureRequest
) -> None:
    model = _model(request)
    registry.register(model, sensor_bundle)
    with pytest.raises(RegistryError, match=rf"^model '{model}' alias 'staging': no such alias in the MLflow"):
        registry.resolve(model, "staging")
    with pytest.raises(RegistryError, match=rf"^model '{model}' version 5: no such version in the MLflow"):
        registry.promote(model, 5, "production")
    with pytest.raises(RegistryError, match=r"^model 'no-such-model': no such model in the MLflow"):
        registry.versions("no-such-model")


def test_serve_follows_an_alias_in_mlflow(
    mlflow_url: str, sensor_bundle: Path, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("AE_MONITOR_REGISTRY_CACHE", str(tmp_path / "serve-cache"))
    model = _model(request)
    registry = open_registry(mlflow_url)
    registry.register(model, sensor_bundle)
    original = load_bundle(sensor_bundle)
    assert original.calibration is not None
    doubled = original.with_calibration(dataclasses.replace(original.calibration, threshold=original.threshold * 2))
    registry.register(model, save_bundle(doubled, tmp_path / "doubled"), parent=1)
    registry.promote(model, 1, "production")
    clock = [1000.0]
    daemon, engine = _daemon(AliasRef.parse(f"registry://{mlflow_url}/{model}@production"), clock)  # type: ignore[arg-type]

    registry.promote(model, 2, "production")
    clock[0] += 5.0
    daemon.step()
    assert engine.bundles["pump"].threshold == original.threshold * 2
    registry.rollback(model, "production")
    clock[0] += 5.0
    daemon.step()
    assert engine.bundles["pump"].threshold == original.threshold


def test_the_cli_takes_an_mlflow_url_as_the_registry(
    mlflow_url: str, sensor_bundle: Path, tmp_path: Path, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("AE_MONITOR_REGISTRY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AE_MONITOR_REGISTRY", mlflow_url)
    model = _model(request)
    assert main(["-q", "registry", "register", model, str(sensor_bundle), "--root", mlflow_url,
                 "--promote", "candidate", "--metric", "far=0.01"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["-q", "registry", "show", model, "candidate", "--root", mlflow_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["metrics"], shown["aliases"]) == (1, {"far": 0.01}, ["candidate"])
    assert main(["-q", "registry", "rollback", model, "--alias", "candidate", "--root", mlflow_url]) == 2
    assert "has no earlier version to roll back to" in capsys.readouterr().err
