"""Shared fixtures. Tests that read ../shared/data skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real Kafka broker fixtures (tests/ is on sys.path: it is not a package).
pytest_plugins = ["kafka_fixture"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sensor_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo's synthetic pumps as CSVs: (train folder, replay folder with labelled faults)."""
    from ae_monitor.jobs.demo import make_data

    return make_data(tmp_path_factory.mktemp("pumps"), train_s=3000, replay_s=1000)


@pytest.fixture(scope="session")
def sensor_bundle(sensor_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sensor bundle trained and calibrated on the healthy synthetic pump."""
    from ae_monitor.jobs.demo import demo_config
    from ae_monitor.jobs.train import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "pump"
    train_bundle(demo_config(), [sensor_data[0]], out, name="pump", progress=False)
    return out
