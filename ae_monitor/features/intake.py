"""Stage 3, intake: what a record must be to feed a bundle's features, and the samples it feeds them.

Audio chunks are reduced to mono at the features' sample rate (`prepare_audio`); sensor records have their channels
put in the bundle's order. A record that cannot feed these features raises RecordError or DataError with the reason
its dead letter carries (`wrong_kind`, `channel_mismatch`, `sample_rate`, ...).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ae_monitor.config import FeaturesConfig
from ae_monitor.errors import RecordError
from ae_monitor.features.clock import Stamp
from ae_monitor.records import AudioRecord, Record, SensorRecord

__all__ = ["admit", "ordered_channels"]


def admit(
    record: Record, features: FeaturesConfig, channels: tuple[str, ...]
) -> tuple[npt.NDArray[np.floating], Stamp]:
    """The samples `record` feeds to features `features` over `channels`, and their stamp (see features.clock)."""
    if isinstance(record, AudioRecord):
        if features.kind != "logmel":
            raise RecordError("audio record for a sensor bundle", reason="wrong_kind")
        # Imported here so that sensor-only processes never import librosa.
        from ae_monitor.features.logmel import prepare_audio

        return prepare_audio(record.samples, record.sample_rate_hz, features.logmel), record.ts_s
    if features.kind != "sensor":
        raise RecordError("sensor record for an audio bundle", reason="wrong_kind")
    return ordered_channels(record, channels), np.asarray(record.ts_s, dtype=np.float64)


def ordered_channels(record: SensorRecord, expected: tuple[str, ...]) -> npt.NDArray[np.floating]:
    """The record's values with columns in the order of `expected` (channel_mismatch when the names differ)."""
    if tuple(record.channels) == expected:
        return record.values
    if set(record.channels) != set(expected):
        missing = sorted(set(expected) - set(record.channels))
        extra = sorted(set(record.channels) - set(expected))
        raise RecordError(
            f"channels do not match the bundle's: missing {missing}, unexpected {extra}", reason="channel_mismatch"
        )
    return record.values[:, [record.channels.index(name) for name in expected]]
