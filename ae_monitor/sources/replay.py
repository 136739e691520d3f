"""File replay: audio files or sensor CSVs turned into a stream of records, as fast as possible or in real time.

Each file is one stream, named by its path relative to the common input folder without the suffix (`valve1/0`).
Chunks of all files are interleaved, so replay exercises the same cross-stream micro-batching as a live source.
Audio files carry no clock: their records are timed from 0 s at the file's first sample. Sensor CSVs keep the
timestamps of their time column.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ae_monitor.config import FeaturesConfig
from ae_monitor.records import AudioRecord, Record, SensorRecord
from ae_monitor.sources.files import list_audio_files, list_sensor_files, read_audio, read_sensor_csv


def stream_name(path: Path, root: Path) -> str:
    """`root/valve1/0.csv` -> `valve1/0`; a single file is named by its stem."""
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    return rel.with_suffix("").as_posix()


def list_inputs(paths: Sequence[str | Path], features: FeaturesConfig) -> list[tuple[Path, Path]]:
    """Every input file under `paths`, each with the root its stream name is taken relative to."""
    lister = list_sensor_files if features.kind == "sensor" else list_audio_files
    return [(file, Path(p)) for p in paths for file in lister(Path(p))]


def file_records(path: Path, root: Path, features: FeaturesConfig, *, chunk_samples: int) -> Iterator[Record]:
    """The records of one file, in chunks of `chunk_samples` samples (rows for sensors)."""
    stream = stream_name(path, root)
    if features.kind == "sensor":
        table = read_sensor_csv(path, features.sensor)
        for lo in range(0, len(table.ts_s), chunk_samples):
            hi = lo + chunk_samples
            yield SensorRecord(stream, table.ts_s[lo:hi], table.values[lo:hi], table.channels)
        return
    samples, rate = read_audio(path)
    for lo in range(0, len(samples), chunk_samples):
        yield AudioRecord(stream, lo / rate, samples[lo : lo + chunk_samples], rate)


def record_offset_s(record: Record, first_ts_s: float) -> float:
    return (record.ts_s if isinstance(record, AudioRecord) else float(record.ts_s[0])) - first_ts_s


class ReplaySource:
    """Replays files as records. `pacing='realtime'` sleeps so stream time advances with wall time."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        features: FeaturesConfig,
        *,
        chunk_samples: int = 4096,
        pacing: str = "fast",
        speed: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        per_file = [
            file_records(f, root, features, chunk_samples=chunk_samples) for f, root in list_inputs(paths, features)
        ]
        self._records = _interleave(per_file)
        self._pending: Record | None = None
        self._done = False
        self._realtime = pacing == "realtime"
        self._speed, self._sleep, self._clock = speed, sleep, clock
        self._first_ts: dict[str, float] = {}
        self._started: float | None = None

    @property
    def exhausted(self) -> bool:
        return self._done

    def poll(self, *, max_records: int) -> list[Record]:
        batch = list(itertools.islice(self._records, max_records))
        if len(batch) < max_records:
            self._done = True
        if self._realtime and batch:
            self._wait_for(batch[-1])
        return batch

    def close(self) -> None:
        self._done = True

    def _wait_for(self, record: Record) -> None:
        now = self._clock()
        if self._started is None:
            self._started = now
        first = self._first_ts.setdefault(record.stream, record_offset_s(record, 0.0))
        due = self._started + record_offset_s(record, first) / self._speed
        if due > now:
            self._sleep(due - now)


def _interleave(iterators: list[Iterator[Record]]) -> Iterator[Record]:
    active = list(iterators)
    while active:
        still = []
        for it in active:
            record = next(it, None)
            if record is not None:
                yield record
                still.append(it)
        active = still
