"""Write constraints.txt: the exact version of every package `pip install -e '.[dev,onnx,mlflow]'` installs, as
installed in the running environment (the one `make test` passed in). The Makefile and the Dockerfile install with
`-c constraints.txt`, so a fresh machine gets the versions the tests ran against. Run after changing dependencies:

    .venv/bin/python scripts/freeze_constraints.py > constraints.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

HEADER = """\
# Exact versions of everything `pip install -e '.[dev,onnx,mlflow]'` installs (ae-monitor's dependencies, the
# extras `make test` installs, and theirs), as `make test` last passed with them. The Makefile and
# deploy/docker/Dockerfile install with `-c constraints.txt`; pyproject.toml keeps the ranges the code supports.
# Regenerate with
# `.venv/bin/python scripts/freeze_constraints.py > constraints.txt` after changing a dependency.
"""


# The extras `make test` installs (the Makefile's .installed-dev target): their closure is pinned too.
TEST_EXTRAS = ("dev", "onnx", "mlflow")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def closure(requirements: list[str]) -> dict[str, str]:
    """Installed name -> version of every package `requirements` need in this environment, recursively."""
    found: dict[str, str] = {}
    todo: list[tuple[list[str], set[str]]] = [(requirements, set())]
    while todo:
        lines, wanted = todo.pop()
        for line in lines:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue  # a platform-specific dependency not installed here
            if _name(req.name) not in found:
                found[_name(req.name)] = version
                todo.append((metadata.distribution(req.name).requires or [], set(req.extras)))
    return found


def main() -> int:
    # The project's own requirements from pyproject.toml (an installed ae-monitor may be an older checkout's).
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = closure([*project["dependencies"], *(req for extra in TEST_EXTRAS for req in extras[extra])])
    sys.stdout.write(HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
