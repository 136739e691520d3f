"""The shell examples of the README and the guides name files that exist: each input is in the repository, in the
shared data folder (`../shared/data`), or written by an earlier command of the same example; no placeholders."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INPUT_OPTIONS = {"--data", "--input", "--bundle", "--config"}
OUTPUT_OPTIONS = {"--out", "--report"}


def sh_blocks(doc: Path) -> list[list[str]]:
    """Each ```sh block of `doc` as its commands (continuation lines joined, comments dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", doc.read_text(), re.DOTALL)
    return [[line.strip() for line in b.replace("\\\n", " ").splitlines() if line.strip()] for b in blocks]


def unknown_inputs(commands: list[str], written: set[str] | None = None) -> list[str]:
    """Inputs of `ae-monitor` commands that are neither in the repository or the shared data nor `written` before
    (by these commands, or as given)."""
    written = set(written or ())
    unknown: list[str] = []
    for command in commands:
        for part in command.split(" && "):
            unknown += _unknown_in(shlex.split(part, comments=True), written)
    return list(dict.fromkeys(unknown))  # once each, in order


def _unknown_in(words: list[str], written: set[str]) -> list[str]:
    unknown = []
    if ">" in words:  # `... > pump.toml`
        written.add(words[words.index(">") + 1])
    if "ae-monitor" in words:
        words = words[words.index("ae-monitor") :]
        inputs = [b for a, b in itertools.pairwise(words) if a in INPUT_OPTIONS]
        inputs += [w for w in words if re.search(r"\.(csv|wav|toml)$", w) and w not in written]
        for a, b in itertools.pairwise(words):
            if a in OUTPUT_OPTIONS:
                written.add(b.rstrip("/"))
                inputs = [i for i in inputs if i != b]
        for path in inputs:
            known = path.startswith("../shared/data/") or (ROOT / path).exists()
            made = any(path == w or path.startswith(w + "/") for w in written)
            if not (known or made):
                unknown.append(path)
    return unknown


def readme_outputs() -> set[str]:
    """What the README's commands write (the guides build on its `bundles/skab`)."""
    written: set[str] = set()
    for block in sh_blocks(ROOT / "README.md"):
        for command in block:
            _unknown_in(shlex.split(command, comments=True), written)
    return written


@pytest.mark.parametrize("doc", ["README.md", "docs/compression-denoising.md"])
def test_the_examples_name_no_file_that_nothing_makes(doc: str) -> None:
    blocks = sh_blocks(ROOT / doc)
    assert blocks
    before = set() if doc == "README.md" else readme_outputs()
    assert [unknown for block in blocks if (unknown := unknown_inputs(block, before))] == []


def test_the_check_does_catch_a_placeholder() -> None:
    commands = ["ae-monitor train --config configs/sensor-skab.toml --data ../shared/data/skab/x --out bundles/a",
                "ae-monitor calibrate --bundle bundles/a --data normal.csv",
                "ae-monitor denoise --bundle bundles/fan-dae --input clips/ --out cleaned/"]  # fmt: skip
    assert unknown_inputs(commands) == ["normal.csv", "bundles/fan-dae", "clips/"]
