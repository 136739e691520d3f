"""The data flow is the architecture: dependencies point one way, and heavy clients stay in their own modules.

Layers, from the bottom: the base (records, errors, config); the stages (features, model, scoring, threshold,
alerting, drift, sources, sinks, metrics, health, logs, kafka_client, registry), each importing only the base,
itself and a few deliberate edges; the engine, which wires the stages; serve, which drives the engine; jobs, the offline
commands; the Python API (api.py); the cli; and on top the package's face (`ae_monitor`), which loads the API
lazily and which anyone may import for its version. Nothing below imports what stands above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ae_monitor"
BASE = ("ae_monitor.records", "ae_monitor.errors", "ae_monitor.config")
# Above the stages, from the bottom up: each may import everything below it, never what is above.
LAYERS = ("ae_monitor.engine", "ae_monitor.serve", "ae_monitor.jobs", "ae_monitor.api", "ae_monitor.cli")
# Stages may use the base modules; these extra edges are deliberate: scoring runs the model, the bundle carries
# the fitted features and the calibration, alerting reads the calibration, both Kafka stages share one client module,
# the registry stores and checks bundles with the bundle module.
ALLOWED = {
    "ae_monitor.scoring": ("ae_monitor.model", "ae_monitor.band_statistic"),
    "ae_monitor.model.bundle": ("ae_monitor.features", "ae_monitor.model", "ae_monitor.threshold"),
    "ae_monitor.alerting": ("ae_monitor.threshold",),
    "ae_monitor.sources.kafka": ("ae_monitor.kafka_client",),
    "ae_monitor.sinks.kafka": ("ae_monitor.kafka_client",),
    "ae_monitor.registry": ("ae_monitor.model.bundle",),
    "ae_monitor.registry.mlflow_backend": ("ae_monitor.model.bundle",),
}
CLIENT_HOMES = {
    "librosa": ("ae_monitor.features",),
    # Both Kafka libraries live behind kafka_client's interface: the source and the sinks import neither.
    "kafka": ("ae_monitor.kafka_client",),
    "confluent_kafka": ("ae_monitor.kafka_client",),
    "mlflow": ("ae_monitor.registry.mlflow_backend",),
}


def _modules() -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        found[name] = imported
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    """`module` is one of `prefixes` or inside one of them (a plain startswith would let `ae_monitor` match all)."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _layer(module: str) -> int:
    """0 for the base and the stages, then 1 + the index in LAYERS; the package's face is above them all."""
    if module == "ae_monitor":
        return len(LAYERS) + 1
    for index, prefix in enumerate(LAYERS):
        if _within(module, (prefix,)):
            return index + 1
    return 0


def _stage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violations(modules: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layering, as 'importer imports imported'."""
    found = []
    for module, imports in sorted(modules.items()):
        for imported in sorted(i for i in imports if _within(i, ("ae_monitor",)) and i != "ae_monitor"):
            if _layer(imported) > _layer(module):
                found.append(f"{module} imports {imported} (a layer above it)")
            elif _layer(module) == 0 and not _within(imported, (*BASE, _stage(module), *ALLOWED.get(module, ()))):
                found.append(f"{module} imports {imported} (a stage imports only the base, itself, allowed edges)")
    return found


def client_violations(modules: dict[str, set[str]]) -> list[str]:
    """Imports of Kafka, librosa or mlflow outside their home modules."""
    return [
        f"{module} imports {client}"
        for module, imports in sorted(modules.items())
        for client, homes in CLIENT_HOMES.items()
        if any(_within(i, (client,)) for i in imports) and not _within(module, homes)
    ]


MODULES = _modules()


def test_the_package_respects_its_layers() -> None:
    assert violations(MODULES) == []


def test_external_clients_stay_in_their_own_modules() -> None:
    assert client_violations(MODULES) == []


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("ae_monitor.features.sensor", "ae_monitor.engine"),  # a stage importing the engine
        ("ae_monitor.sinks.kafka", "ae_monitor.serve.outputs"),  # a stage importing serve
        ("ae_monitor.engine.ingest", "ae_monitor.serve.outputs"),  # the engine importing serve
        ("ae_monitor.serve.loop", "ae_monitor.jobs.demo"),  # serve importing the offline jobs
        ("ae_monitor.features.logmel", "ae_monitor.scoring"),  # a stage importing another stage sideways
        ("ae_monitor.threshold", "ae_monitor.metrics"),
    ],
)
def test_the_layering_check_catches_a_wrong_import(module: str, imported: str) -> None:
    found = violations({module: {imported}})
    assert len(found) == 1
    assert found[0].startswith(f"{module} imports {imported} (")


def test_the_layering_check_accepts_imports_that_point_down() -> None:
    fine = {
        "ae_monitor.serve.loop": {"ae_monitor.engine", "ae_monitor.sinks.delivery", "ae_monitor.config"},
        "ae_monitor.engine.windows": {"ae_monitor.scoring", "ae_monitor.features.clock", "ae_monitor.records"},
        "ae_monitor.scoring": {"ae_monitor.model.networks", "ae_monitor.errors"},
    }
    assert violations(fine) == []


def test_the_client_check_catches_kafka_outside_its_homes() -> None:
    assert client_violations({"ae_monitor.engine.ingest": {"kafka.errors"}}) == [
        "ae_monitor.engine.ingest imports kafka"
    ]


def test_libraries_never_print() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        assert "print(" not in path.read_text(), f"{path} prints; use logging"
