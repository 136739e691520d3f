"""The data flow is the architecture: dependencies point one way, and heavy clients stay in their own modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ae_monitor"
BASE = {"ae_monitor", "ae_monitor.records", "ae_monitor.errors", "ae_monitor.config"}
WIRING = ("ae_monitor.pipeline", "ae_monitor.service", "ae_monitor.cli", "ae_monitor.jobs")
# Stages may use the base modules; these extra edges are deliberate: scoring runs the model, the bundle carries
# the fitted features and the calibration, replay uses the file loaders, alerting reads the calibration.
ALLOWED = {
    "ae_monitor.scoring": ("ae_monitor.model",),
    "ae_monitor.model.bundle": ("ae_monitor.features", "ae_monitor.model", "ae_monitor.threshold"),
    "ae_monitor.alerting": ("ae_monitor.threshold",),
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


MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith(WIRING) and m != "ae_monitor.plots"))
def test_stages_import_only_the_base_their_own_stage_and_allowed_edges(module: str) -> None:
    allowed = (*BASE, _stage(module), *ALLOWED.get(module, ()))
    for imported in MODULES[module]:
        if imported.startswith("ae_monitor"):
            assert imported.startswith(allowed), f"{module} imports {imported}"


@pytest.mark.parametrize(
    ("client", "home"), [("librosa", "ae_monitor.features"), ("kafka", "ae_monitor.sources.kafka")]
)
def test_external_clients_stay_in_their_own_modules(client: str, home: str) -> None:
    for module, imported in MODULES.items():
        if any(i == client or i.startswith(client + ".") for i in imported):
            assert module.startswith(home) or module.startswith("ae_monitor.sinks.kafka"), f"{module} imports {client}"


def test_libraries_never_print() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        assert "print(" not in path.read_text(), f"{path} prints; use logging"
