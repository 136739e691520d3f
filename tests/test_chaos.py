"""scripts/chaos.py, short: the fault drills hold through a real broker (the full run is `make chaos`)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    return load_script("chaos.py", name="_chaos")


def test_quick_drills_lose_nothing_and_fire_no_episode_twice(
    chaos: ModuleType, kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del kafka_bootstrap  # the drills start a broker of their own (they kill it); this marks the test `kafka`
    out = tmp_path / "rows.json"
    scenarios = "broker-restart,serve-kill,stalled-stream,fuzz"
    code = chaos.main(["--quick", "--scenarios", scenarios, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in scenarios.split(","):
        row = next(line for line in printed.splitlines() if line.startswith(name))
        assert row.endswith("yes"), printed
