"""Stage 1, file loaders: audio files and sensor CSVs as arrays, shared by training, evaluation and file replay.

Audio is read with soundfile (WAV incl. WAVE_FORMAT_EXTENSIBLE multichannel files, FLAC). Sensor CSVs are read with
the csv module; SKAB files (`;`-separated, `datetime;Accelerometer1RMS;...;anomaly;changepoint`) load as they are.
Every problem is a DataError naming the file (and the row and column where there is one).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from ae_monitor.config import SensorConfig
from ae_monitor.errors import DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "SensorTable",
    "audio_label",
    "list_audio_files",
    "list_sensor_files",
    "read_audio",
    "read_sensor_csv",
]

AUDIO_SUFFIXES = (".wav", ".flac")
_SEPARATORS = (";", ",", "\t")

F64 = npt.NDArray[np.float64]


def read_audio(path: str | Path) -> tuple[npt.NDArray[np.float32], int]:
    """(samples, sample_rate_hz): float32 in [-1, 1], shape (n,) for mono files, (n, channels) otherwise."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise DataError(f"cannot read audio file {path}: {exc}") from exc
    return samples, int(rate)


def list_audio_files(path: str | Path) -> list[Path]:
    """`path` itself if it is a file, else every .wav/.flac below it, sorted (`<machine>/train/*.wav` works)."""
    return _list_files(Path(path), AUDIO_SUFFIXES, "audio (.wav, .flac)")


def list_sensor_files(path: str | Path) -> list[Path]:
    """`path` itself if it is a file, else every .csv below it, sorted."""
    return _list_files(Path(path), (".csv",), "CSV")


def _list_files(path: Path, suffixes: Sequence[str], kind: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"no {kind} files found under {path}")
    return files


def audio_label(path: str | Path) -> int | None:
    """1 (anomalous), 0 (normal) or None (unknown), from the file name.

    >>> audio_label("anomaly_id_06_00000100.wav"), audio_label("fan_normal.wav"), audio_label("fan_abnormal.wav")
    (1, 0, 1)
    >>> audio_label("section_00_target_test_anomaly_0001.wav"), audio_label("clip.wav")
    (1, None)
    """
    name = Path(path).name.lower()
    if name.startswith("anomaly") or "_anomaly" in name or "abnormal" in name:
        return 1
    if name.startswith("normal") or "_normal" in name:
        return 0
    return None


@dataclass(frozen=True)
class SensorTable:
    """The rows of one sensor CSV. `labels` (0/1 per row) comes from the label column when the file has one."""

    path: Path
    ts_s: F64
    values: F64
    channels: tuple[str, ...]
    labels: npt.NDArray[np.int64] | None

    def __len__(self) -> int:
        return len(self.ts_s)


@dataclass(frozen=True)
class _Csv:
    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # the file line of each row, for messages


def read_sensor_csv(path: str | Path, cfg: SensorConfig, *, rows: slice | None = None) -> SensorTable:
    """Read a sensor CSV; `rows` selects data rows (0-based, after the header) with Python slice semantics.

    Separator: `cfg.csv_separator`, or sniffed from the header (`;`, `,` or tab). Time: `cfg.time_column` holding
    ISO datetimes (naive ones are taken as UTC) or numeric epoch seconds; when the file has no such column the time
    of data row i is i * `cfg.sample_period_s`. Channels: `cfg.channels` in that order, or else every column except
    the time and label columns whose first data row is numeric. Labels: the first of `cfg.label_columns`
    (`anomaly` by default) as integers, None when the file lacks that column. Empty cells are NaN (the features'
    `nan_policy` handles them).
    """
    table = _read_csv(Path(path), cfg.csv_separator)
    indices = range(len(table.rows))[rows if rows is not None else slice(None)]
    picked = _Csv(table.path, table.header, [table.rows[i] for i in indices], [table.lines[i] for i in indices])
    channels = _channel_names(table, cfg)
    return SensorTable(
        path=table.path,
        ts_s=_times(picked, cfg, indices),
        values=np.column_stack([_numbers(picked, name) for name in channels]),
        channels=channels,
        labels=_labels(picked, cfg),
    )


def _read_csv(path: Path, separator: str | None) -> _Csv:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            delimiter = separator or _sniff_separator(handle.readline())
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            body = [(reader.line_num, row) for row in reader if row]  # blank lines carry no data
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV file {path}: {exc}") from exc
    if not header:
        raise DataError(f"{path} is empty: expected a header row")
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
    return _Csv(path, header, [row for _, row in body], [line for line, _ in body])


def _sniff_separator(header_line: str) -> str:
    # Pick the candidate that splits the header most; a one-column file has none, and then any will do.
    return max(_SEPARATORS, key=header_line.count)


def _channel_names(table: _Csv, cfg: SensorConfig) -> tuple[str, ...]:
    if cfg.channels:
        missing = [name for name in cfg.channels if name not in table.header]
        if missing:
            raise DataError(f"{table.path}: channel(s) {missing} not found; the columns are {table.header}")
        return cfg.channels
    skip = {cfg.time_column, *cfg.label_columns}
    first = table.rows[0] if table.rows else [""] * len(table.header)
    names = tuple(n for n, cell in zip(table.header, first, strict=True) if n not in skip and _is_number(cell))
    if not names:
        raise DataError(f"{table.path}: no numeric channel columns among {table.header}")
    return names


def _is_number(cell: str) -> bool:
    try:
        float(cell or "nan")
    except ValueError:
        return False
    return True


def _numbers(table: _Csv, name: str) -> F64:
    column = table.header.index(name)
    cells = [row[column].strip() or "nan" for row in table.rows]
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass  # find the culprit for the message
    for i, cell in enumerate(cells):
        if not _is_number(cell):
            raise DataError(
                f"{table.path}: line {table.lines[i]} (data row {i}), column {name!r}: {cell!r} is not a number"
            )
    raise AssertionError("unreachable: every cell parsed")


def _times(table: _Csv, cfg: SensorConfig, indices: range) -> F64:
    if cfg.time_column not in table.header:
        return np.asarray(indices, dtype=np.float64) * cfg.sample_period_s
    column = table.header.index(cfg.time_column)
    cells = [row[column].strip() for row in table.rows]
    try:
        return np.array(cells, dtype=np.float64)  # numeric epoch seconds
    except ValueError:
        return np.array([_epoch_s(table, i, cell) for i, cell in enumerate(cells)], dtype=np.float64)


def _epoch_s(table: _Csv, i: int, cell: str) -> float:
    try:
        moment = datetime.fromisoformat(cell)
    except ValueError as exc:
        raise DataError(
            f"{table.path}: line {table.lines[i]} (data row {i}): time {cell!r} is neither an ISO datetime "
            "nor epoch seconds"
        ) from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _labels(table: _Csv, cfg: SensorConfig) -> npt.NDArray[np.int64] | None:
    if not cfg.label_columns or cfg.label_columns[0] not in table.header:
        return None
    name = cfg.label_columns[0]
    labels = _numbers(table, name)
    if not np.isfinite(labels).all():
        raise DataError(f"{table.path}: column {name!r} has missing labels")
    return labels.astype(np.int64)
