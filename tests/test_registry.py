"""The filesystem bundle registry: numbered versions, aliases switched atomically, rollback, provenance, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import pytest

from ae_monitor.cli import main
from ae_monitor.config import config_from_dict
from ae_monitor.errors import ConfigError, RegistryError
from ae_monitor.model.bundle import WEIGHTS, load_bundle, save_bundle
from ae_monitor.registry import AliasRef, Registry, bundle_location


def _recalibrated(bundle_dir: Path, out: Path, factor: float) -> Path:
    """A copy of the bundle with its threshold scaled: another model to register."""
    bundle = load_bundle(bundle_dir)
    assert bundle.calibration is not None
    calibration = dataclasses.replace(bundle.calibration, threshold=bundle.threshold * factor)
    return save_bundle(bundle.with_calibration(calibration, bundle.calibration_scores), out)


def test_registered_versions_are_numbered_and_keep_a_verified_copy_with_provenance(
    sensor_bundle: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "reg")
    first = registry.register("pump", sensor_bundle, data_span=("2026-01-01", "2026-01-08"), by="ops@test")
    second = registry.register("pump", sensor_bundle, parent=1, metrics={"shadow_far": 0.01}, note="retrained")

    assert [v.number for v in registry.versions("pump")] == [1, 2]
    assert first.bundle_path == tmp_path / "reg" / "pump" / "1" / "bundle"
    assert load_bundle(first.bundle_path).version == load_bundle(sensor_bundle).version  # sealed and loadable
    p = first.provenance
    assert (p["model"], p["version"], p["parent"], p["registered_by"]) == ("pump", 1, None, "ops@test")
    assert p["training"]["files"] == ["pump-0"]
    assert p["training"]["data_span"] == {"start": "2026-01-01", "end": "2026-01-08"}
    assert p["calibration"]["threshold"] == pytest.approx(load_bundle(sensor_bundle).threshold)
    assert p["bundle"]["weights_version"] == load_bundle(sensor_bundle).version
    assert (second.provenance["parent"], second.provenance["metrics"]) == (1, {"shadow_far": 0.01})
    registry.add_metrics("pump", 2, {"shadow_alerts": 3})
    assert registry.version("pump", 2).provenance["metrics"] == {"shadow_far": 0.01, "shadow_alerts": 3}


def test_a_tampered_bundle_is_refused_and_leaves_no_version(sensor_bundle: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(sensor_bundle, tmp_path / "bad"))
    (bad / WEIGHTS).write_bytes(b"tampered")
    registry = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match=r"^model 'pump': cannot register .*sha256 mismatch"):
        registry.register("pump", bad)
    with pytest.raises(RegistryError, match="no such model"):
        registry.versions("pump")


def test_a_parent_that_does_not_exist_is_refused(sensor_bundle: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.register("pump", sensor_bundle)
    with pytest.raises(RegistryError, match=r"^model 'pump' version 7: no such version"):
        registry.register("pump", sensor_bundle, parent=7)


def test_promote_moves_an_alias_and_rollback_moves_it_back_keeping_the_history(
    sensor_bundle: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "reg")
    for _ in range(3):
        registry.register("pump", sensor_bundle)
    registry.promote("pump", 1, "production", by="a")
    registry.promote("pump", 2, "production", by="b", reason="better FAR")
    registry.promote("pump", 3, "production")
    registry.promote("pump", 3, "candidate")
    assert registry.resolve("pump", "production").number == 3

    assert registry.rollback("pump", "production", reason="alert storm").version == 2
    assert registry.rollback("pump", "production").version == 1
    alias = registry.alias("pump", "production")
    assert [(m["action"], m["from"], m["to"]) for m in alias.moves] == [
        ("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("rollback", 3, 2), ("rollback", 2, 1),
    ]  # fmt: skip
    assert alias.moves[1]["reason"] == "better FAR"
    with pytest.raises(RegistryError, match=r"^model 'pump' alias 'production': has no earlier version"):
        registry.rollback("pump", "production")
    assert registry.alias("pump", "candidate").version == 3  # other aliases do not move


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda r: r.promote("pump", 9, "production"), r"^model 'pump' version 9: no such version"),
        (lambda r: r.resolve("pump", "staging"), r"^model 'pump' alias 'staging': no such alias"),
        (lambda r: r.versions("fan"), r"^model 'fan': no such model"),
        (lambda r: r.promote("pump", 1, "../x"), r"^model 'pump' alias '../x': '../x' is not a usable name"),
        (lambda r: r.promote("pump", 1, "production"), r"^model 'pump' alias 'production': already names version 1"),
    ],
)
def test_errors_name_the_model_version_or_alias(sensor_bundle: Path, tmp_path: Path, action, message) -> None:  # type: ignore[no-untyped-def]
    registry = Registry(tmp_path / "reg")
    registry.register("pump", sensor_bundle)
    registry.promote("pump", 1, "production")
    with pytest.raises(RegistryError, match=message):
        action(registry)


def test_a_reader_never_sees_a_half_written_alias(sensor_bundle: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.register("pump", sensor_bundle)
    registry.register("pump", sensor_bundle)
    registry.promote("pump", 1, "production")
    path = tmp_path / "reg" / "pump" / "aliases" / "production.json"
    done, seen, broken = threading.Event(), set(), []

    def read() -> None:
        while not done.is_set():
            try:
                seen.add(json.loads(path.read_text())["version"])
            except (json.JSONDecodeError, KeyError) as exc:
                broken.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(150):
            registry.promote("pump", 2, "production")
            registry.rollback("pump", "production")
    finally:
        done.set()
        reader.join()
    assert broken == []
    assert seen == {1, 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["production.json"]  # no temporary files left


def test_writers_that_register_at_once_get_distinct_versions(sensor_bundle: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    numbers: list[int] = []
    threads = [threading.Thread(target=lambda: numbers.append(registry.register("pump", sensor_bundle).number))
               for _ in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == [1, 2, 3, 4]
    assert [v.number for v in registry.versions("pump")] == [1, 2, 3, 4]


def test_a_writer_waits_while_another_holds_the_models_lock(sensor_bundle: Path, tmp_path: Path) -> None:
    import fcntl

    registry = Registry(tmp_path / "reg")
    registry.register("pump", sensor_bundle)
    finished = threading.Event()
    with (tmp_path / "reg" / "pump" / ".lock").open("a") as other_writer:  # another node's promote, say
        fcntl.flock(other_writer, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: (registry.promote("pump", 1, "production"), finished.set()))
        thread.start()
        assert not finished.wait(0.5)
        fcntl.flock(other_writer, fcntl.LOCK_UN)
    thread.join()
    assert registry.alias("pump", "production").version == 1


def test_an_alias_reference_resolves_to_the_version_it_names_now(sensor_bundle: Path, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.register("pump", sensor_bundle)
    registry.register("pump", _recalibrated(sensor_bundle, tmp_path / "x2", 2.0))
    registry.promote("pump", 1, "production")
    ref = AliasRef.parse(f"registry://{tmp_path / 'reg'}/pump@production")
    assert ref == AliasRef(str(tmp_path / "reg"), "pump", "production")
    assert str(ref) == f"registry://{tmp_path / 'reg'}/pump@production"
    assert bundle_location(ref) == tmp_path / "reg" / "pump" / "1" / "bundle"
    registry.promote("pump", 2, "production")
    assert bundle_location(ref) == tmp_path / "reg" / "pump" / "2" / "bundle"
    assert bundle_location(tmp_path / "plain") == tmp_path / "plain"
    assert AliasRef.parse("bundles/pump") is None


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("registry:///srv/models/pump", r"routes\.0\.bundle_path: .*is not registry://<root>/<model>@<alias>"),
        ("registry://pump@production", r"routes\.0\.bundle_path: .*is not registry://<root>/<model>@<alias>"),
        ("registry:///srv/models/pu mp@production", r"routes\.0\.bundle_path: .*model name 'pu mp'"),
        ("registry:///srv/models/pump@", r"routes\.0\.bundle_path: .*alias name ''"),
    ],
)
def test_a_malformed_registry_reference_is_refused_naming_the_key(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"routes": [{"bundle_path": reference}]})


def test_the_cli_registers_promotes_lists_shows_and_rolls_back(
    sensor_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "reg")
    assert main(["-q", "registry", "register", "pump", str(sensor_bundle), "--root", root, "--promote", "production",
                 "--metric", "f1=0.9", "--metric", "period=7d"]) == 0  # fmt: skip
    assert main(["-q", "registry", "register", "pump", str(sensor_bundle), "--root", root, "--parent", "1"]) == 0
    assert main(["-q", "registry", "promote", "pump", "2", "--root", root, "--reason", "shadow ok"]) == 0
    capsys.readouterr()

    assert main(["-q", "registry", "list", "--root", root]) == 0
    assert capsys.readouterr().out == "pump: 2 versions  production=2\n"
    assert main(["-q", "registry", "list", "pump", "--root", root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert lines[1].endswith("parent 1  production")
    assert main(["-q", "registry", "show", "pump", "1", "--root", root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["metrics"], shown["aliases"]) == ({"f1": 0.9, "period": "7d"}, [])

    assert main(["-q", "registry", "rollback", "pump", "--root", root]) == 0
    assert capsys.readouterr().out == "pump production -> version 1 (rolled back from 2)\n"
    assert main(["-q", "registry", "show", "pump", "production", "--root", root]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1


def test_the_cli_says_in_one_line_what_the_registry_lacks(
    sensor_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "reg")
    assert main(["-q", "registry", "register", "pump", str(sensor_bundle), "--root", root]) == 0
    capsys.readouterr()
    assert main(["-q", "registry", "rollback", "pump", "--alias", "candidate", "--root", root]) == 2
    err = capsys.readouterr().err
    assert err == f"ae-monitor: error: model 'pump' alias 'candidate': no such alias in the registry at {root}\n"
    assert main(["-q", "registry", "list", "--root", ""]) == 2
    assert "--root: no registry folder" in capsys.readouterr().err


def test_a_bundle_with_an_onnx_graph_keeps_it_when_registered(sensor_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed")
    from ae_monitor.model.bundle import export_onnx

    exported = Path(shutil.copytree(sensor_bundle, tmp_path / "exported"))
    export_onnx(exported)
    version = Registry(tmp_path / "reg").register("pump", exported)
    assert load_bundle(version.bundle_path, backend="onnx").onnx is not None


def test_serve_startup_stops_on_an_alias_the_registry_lacks(sensor_bundle: Path, tmp_path: Path) -> None:
    from ae_monitor.serve.app import load_routed_bundles

    Registry(tmp_path / "reg").register("pump", sensor_bundle)
    config = config_from_dict({"routes": [{"bundle_path": f"registry://{tmp_path / 'reg'}/pump@production"}]})
    with pytest.raises(RegistryError, match=r"^model 'pump' alias 'production': no such alias"):
        load_routed_bundles(config)
    Registry(tmp_path / "reg").promote("pump", 1, "production")
    bundles, routes, paths = load_routed_bundles(config)
    key = f"registry://{tmp_path / 'reg'}/pump@production"
    assert list(bundles) == [key] == [k for _, k in routes]
    assert paths[key] == AliasRef(str(tmp_path / "reg"), "pump", "production")


def test_replay_takes_a_registry_alias_and_says_in_one_line_when_it_is_missing(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ae_monitor.config import dump_config
    from ae_monitor.jobs.demo import demo_config

    (tmp_path / "pump.toml").write_text(dump_config(demo_config()))
    Registry(tmp_path / "reg").register("pump", sensor_bundle)
    replay = ["-q", "replay", "--config", str(tmp_path / "pump.toml"), "--no-metrics",
              "--bundle", f"registry://{tmp_path / 'reg'}/pump@production",
              "--input", str(sensor_data[1] / "pump-1.csv")]  # fmt: skip
    assert main(replay) == 2
    assert capsys.readouterr().err.startswith("ae-monitor: error: model 'pump' alias 'production': no such alias")
    Registry(tmp_path / "reg").promote("pump", 1, "production")
    assert main(replay) == 0
    assert capsys.readouterr().err == ""
