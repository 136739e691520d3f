"""What ships: the wheel `make dist` builds carries the package, the Python API, the Apache-2.0 licence and the
guides the systemd unit points at; installs are pinned by constraints.txt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import ae_monitor

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "ae-monitor.service"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built exactly as `make dist` builds it."""
    recipe = subprocess.run(["make", "-n", "dist"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    assert "pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist ." in recipe
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
               str(out), str(ROOT)]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    if built.returncode != 0 and "setuptools" in built.stderr:
        pytest.skip(f"no setuptools>=77 to build with here: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("ae_monitor-*.whl")
    return path


def test_the_license_file_is_the_apache_2_0_text_that_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_make_dist_builds_the_wheel_that_the_operations_guide_installs(wheel: Path) -> None:
    assert wheel.name == f"ae_monitor-{ae_monitor.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "ae_monitor/api.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata_text = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata_text
    guides = [(ROOT / "docs" / "operations.md").read_text(), (ROOT / "README.md").read_text()]
    assert "dist/ae_monitor-*.whl" in guides[0]
    assert not any(re.search(r"pip install (--\S+ )*ae[-_]monitor\b", text) for text in guides)  # on no index


def test_the_systemd_units_documentation_is_a_file_the_wheel_installs_beside_its_executable(wheel: Path) -> None:
    unit = UNIT.read_text()
    (documentation,) = re.findall(r"^Documentation=file://(\S+)$", unit, re.MULTILINE)
    (executable,) = re.findall(r"^ExecStart=(\S+)", unit, re.MULTILINE)
    prefix = Path(executable).parent.parent  # /usr/local/bin/ae-monitor -> /usr/local
    # Read from the wheel rather than installed (an install next to this environment's would replace it): pip
    # puts `<name>.data/data/X` at <prefix>/X and console scripts in <prefix>/bin.
    archive = zipfile.ZipFile(wheel)
    data = {n.split(".data/data/", 1)[1]: n for n in archive.namelist() if ".data/data/" in n}
    relative = Path(documentation).relative_to(prefix).as_posix()
    assert relative in data, sorted(data)
    assert archive.read(data[relative]).decode() == (ROOT / "docs" / "operations.md").read_text()
    entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
    assert f"{Path(executable).name} = ae_monitor.cli:main" in entry_points


def test_the_wheel_ships_the_reference_configs_where_an_installed_package_finds_them(
    wheel: Path, tmp_path: Path
) -> None:
    # A throwaway environment with only the wheel (no dependencies): the lookup needs none of them. Without
    # PYTHONPATH, which may name this checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, capture_output=True, env=env)
    python = tmp_path / "venv" / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, env=env)
    code = "from ae_monitor.starters import shipped_config; print(shipped_config('sensor-skab.toml'))"
    found = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                           env=env)  # fmt: skip
    path = Path(found.stdout.strip())
    assert path == (tmp_path / "venv" / "share" / "ae-monitor" / "configs" / "sensor-skab.toml").resolve()
    assert path.read_text() == (ROOT / "configs" / "sensor-skab.toml").read_text()


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_requirement_is_pinned_within_the_range_pyproject_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(line)
        assert _key(requirement.name) in pins, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(pins[_key(requirement.name)]), line


def test_make_installs_with_the_constraints() -> None:
    recipe = subprocess.run(["make", "-n", "-B", ".venv/.installed", ".venv/.installed-dev"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    installs = [line for line in recipe.splitlines() if "pip install" in line and "-e " in line]
    assert len(installs) == 2
    assert all("-c constraints.txt" in line for line in installs), installs


def test_this_environment_is_the_pinned_one() -> None:
    """The versions the tests run against are the pinned ones: after a dependency changes, regenerate the file
    (scripts/freeze_constraints.py) from the environment the tests passed in."""
    installed = {_key(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {name: (pin, installed[name]) for name, pin in _pins().items() if installed.get(name, pin) != pin}
    assert not differ, f"pinned vs installed: {differ}"
