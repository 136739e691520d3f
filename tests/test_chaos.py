"""scripts/chaos.py, short: the fault drills hold through a real broker with either Kafka client (the full run is
`make chaos`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chaos.py"


def test_quick_drills_lose_nothing_and_fire_no_episode_twice(kafka_bootstrap: str, client_library: str) -> None:
    del kafka_bootstrap  # the drills start a broker of their own (they kill it); this marks the test `kafka`
    scenarios = "broker-restart,serve-kill,stalled-stream,fuzz"
    # A process of its own: kafka-python leaves the sockets of clients that lost their broker to the garbage
    # collector, and their ResourceWarnings would surface in whichever test runs next.
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    command = [sys.executable, str(SCRIPT), "--quick", "--scenarios", scenarios, "--client", client_library]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for name in scenarios.split(","):
        row = next(line for line in result.stdout.splitlines() if line.startswith(name))
        assert row.rstrip().endswith("yes"), result.stdout
