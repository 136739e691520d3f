"""What ships: the wheel `make dist` builds carries the package, the Python API and the Apache-2.0 licence."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ae_monitor

ROOT = Path(__file__).resolve().parents[1]


def test_the_license_file_is_the_apache_2_0_text_that_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_make_dist_builds_the_wheel_that_the_operations_guide_installs(tmp_path: Path) -> None:
    recipe = subprocess.run(["make", "-n", "dist"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    assert "pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist ." in recipe
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
               str(tmp_path), str(ROOT)]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    if built.returncode != 0 and "setuptools" in built.stderr:
        pytest.skip(f"no setuptools>=77 to build with here: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("ae_monitor-*.whl")
    assert wheel.name.startswith(f"ae_monitor-{ae_monitor.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ae_monitor/api.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "dist/ae_monitor-*.whl" in (ROOT / "docs" / "operations.md").read_text()
