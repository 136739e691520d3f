"""The JSON Lines source: records in the Kafka JSON format, bad lines dead-lettered with their line number."""

from __future__ import annotations

import io

from ae_monitor.records import DeadLetter, SensorRecord
from ae_monitor.sources.stdin import JsonLinesSource

LINES = (
    '{"stream": "pump-1", "ts": 1.0, "values": {"a": 1.0, "b": 2.0}}\n'
    "\n"
    "not json\n"
    '{"stream": "pump-1", "ts": [2.0, 3.0], "values": {"a": [1.0, 1.5], "b": [2.0, 2.5]}}\n'
)


def test_lines_become_records_and_bad_lines_dead_letters() -> None:
    letters: list[DeadLetter] = []
    source = JsonLinesSource(io.StringIO(LINES), on_dead_letter=letters.append)
    records = source.poll(max_records=10)
    assert source.exhausted
    assert [len(r.ts_s) for r in records if isinstance(r, SensorRecord)] == [1, 2]
    assert [(d.source, d.reason) for d in letters] == [("stdin:3", "invalid_json")]
    assert letters[0].payload == "not json"


def test_poll_returns_at_most_max_records() -> None:
    source = JsonLinesSource(io.StringIO(LINES), on_dead_letter=lambda letter: None)
    assert len(source.poll(max_records=1)) == 1
    assert not source.exhausted
