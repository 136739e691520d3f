"""Stage 1, source: turn one message (key, value, headers) into a record. Pure functions, no Kafka import.

Three formats are accepted, all by default (docs/records.md, schemas under docs/schemas/):

- sensor, one sample: ``{"stream": "pump-7", "ts": 1732600000.25, "values": {"pressure": 1.2, "temp": 33.1}}``;
- sensor, a batch: the same keys, ``ts`` a list and every channel a list of the same length;
- audio chunk: the value is raw interleaved little-endian PCM (``s16le`` or ``f32le``), the key is the stream id,
  headers ``format``, ``sample_rate``, ``channels`` and ``ts`` (ASCII). A message is audio exactly when it has a
  ``format`` header.

A JSON ``stream`` field wins over the message key (a producer may key by machine and send several streams of it).
``null`` channel values become NaN (the sensor ``nan_policy`` handles them); anything else invalid raises
RecordError with a short ``reason`` (the dead-letter label).

This is the daemon's hot path (tens of thousands of single-sample messages per second on one core). `decode_batch`
decodes a whole poll: single-sample sensor messages go through a typed msgspec decoder (parsing and type checks in
C) into columnar `SampleRows` blocks; anything that decoder refuses takes the careful path below, which parses JSON
once, checks types by hand and names what is wrong. Both accept and refuse exactly the same messages.

>>> rec = decode_message(None, b'{"stream": "p", "ts": 1.5, "values": {"a": 1, "b": null}}', ())
>>> rec.stream, rec.channels, rec.values.shape
('p', ('a', 'b'), (1, 2))
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from ae_monitor.errors import RecordError
from ae_monitor.records import AudioRecord, DeadLetter, Record, SampleRows, SensorRecord

FORMAT_HEADER = "format"
BASE64_PREFIX = "base64:"  # a DeadLetter.payload of bytes that are not UTF-8 text
AUDIO_FORMATS: dict[str, np.dtype[Any]] = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
_S16_SCALE = np.float32(1.0 / 32768.0)
_NAN = math.nan
_INF = math.inf
_MAX_FLOAT = 1.7976931348623157e308
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity literals; they are not JSON (RFC 8259), so they are rejected here.
    raise ValueError(f"{name} is not a JSON value")


# One decoder built once: json.loads with keyword arguments would build a new decoder per message.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


Headers = Sequence[tuple[str, bytes]]


class _Sample(msgspec.Struct):
    """The single-sample sensor format, as the fast decoder checks it (null channel values are allowed)."""

    ts: float
    values: dict[str, float | None]
    stream: str | None = None


_SAMPLE = msgspec.json.Decoder(_Sample)
# Longer values take the careful path: it refuses integers of more than 4,300 digits (Python's conversion limit),
# which msgspec would take, and single samples are far shorter.
_FAST_MAX_BYTES = 4096
Message = tuple[bytes | None, bytes | None, Headers]


def decode_batch(messages: Sequence[Message]) -> tuple[list[Record | SampleRows], list[tuple[int, RecordError]]]:
    """Decode messages in order: (records and SampleRows blocks, holding the good messages in their order;
    (message index, error) of the others). Consecutive single-sample sensor messages with the same channels share one
    SampleRows block; every other message becomes what `decode_message` makes of it."""
    whole = _all_at_once(messages)
    if whole is not None:
        return [whole], []
    items: list[Record | SampleRows] = []
    errors: list[tuple[int, RecordError]] = []
    block = _Block(messages, items, errors)
    for i, (key, value, headers) in enumerate(messages):
        sample = _fast_sample(key, value, headers)
        if sample is not None:
            block.add(i, *sample)
        else:
            block.close()
            _decode_one(i, messages[i], items, errors)
    block.close()
    return items, errors


def _all_at_once(messages: Sequence[Message]) -> SampleRows | None:
    """The common poll, one SampleRows: ASCII single samples of the same channels (in any key order), no headers,
    parsed by one msgspec call into typed structs, one line per message. None when any message needs a closer look
    (then each is decoded on its own)."""
    values = [value for _, value, _ in messages if value]
    if not values or len(values) < len(messages) or any(headers for _, _, headers in messages):
        return None
    joined = b"\n".join(values)
    # One line per message: no value holds a newline (nor is blank, which decode_lines would skip).
    if not joined.isascii() or joined.count(b"\n") != len(values) - 1 or max(map(len, values)) > _FAST_MAX_BYTES:
        return None
    try:
        channels = tuple(_SAMPLE.decode(values[0]).values)
        samples = _typed_decoder(channels).decode_lines(joined) if channels else []
    except (msgspec.MsgspecError, RecursionError, ValueError):  # ValueError: a channel name msgspec cannot hold
        return None
    if len(samples) != len(values):
        return None
    streams = _streams(samples, messages)
    if streams is None:
        return None
    ts = np.array([s.ts for s in samples], dtype=np.float64)
    rows = np.array([msgspec.structs.astuple(s.values) for s in samples], dtype=np.float64)  # null -> NaN
    if _extreme(ts) or _extreme(rows):
        return None
    return SampleRows(streams, ts, rows, channels)


def _streams(samples: list[Any], messages: Sequence[Message]) -> list[str] | None:
    """Each sample's stream: its `stream` field, else its message key; None if one has neither (or an empty one)."""
    try:
        streams = [
            sample.stream if sample.stream is not None else key.decode()  # type: ignore[union-attr]
            for sample, (key, _, _) in zip(samples, messages, strict=True)
        ]
    except (AttributeError, UnicodeDecodeError):  # no key (None has no decode), or not UTF-8
        return None
    return None if "" in streams else streams


def _checked(key: bytes | None, sample: _Sample) -> tuple[str, float, dict[str, float | None]] | None:
    stream = sample.stream
    if stream is None and key:
        try:
            stream = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not stream or not sample.values:
        return None
    return stream, sample.ts, sample.values


@functools.lru_cache(maxsize=32)
def _typed_decoder(channels: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder of single samples with exactly these channels (a missing or unknown one fails the decode)."""
    names = {f"c{i}": name for i, name in enumerate(channels)}
    values = msgspec.defstruct("Values", [(field, float | None) for field in names], rename=names,
                               forbid_unknown_fields=True)  # fmt: skip
    sample = msgspec.defstruct("TypedSample", [("ts", float), ("values", values), ("stream", str | None, None)])
    return msgspec.json.Decoder(sample)


def _decode_one(
    i: int, message: Message, items: list[Record | SampleRows], errors: list[tuple[int, RecordError]]
) -> None:
    try:
        items.append(decode_message(*message))
    except RecordError as exc:
        errors.append((i, exc))


def _fast_sample(
    key: bytes | None, value: bytes | None, headers: Headers
) -> tuple[str, float, dict[str, float | None]] | None:
    """(stream, ts, values) of a valid single-sample sensor message; None sends it down the careful path."""
    if not value or len(value) > _FAST_MAX_BYTES or (headers and any(name == FORMAT_HEADER for name, _ in headers)):
        return None
    try:
        if not value.isascii():
            value.decode("utf-8")  # msgspec does not check the UTF-8 of fields it skips; the careful path does
        sample = _SAMPLE.decode(value)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    return _checked(key, sample)


class _Block:
    """Consecutive single samples with the same channels, on their way into one SampleRows."""

    def __init__(
        self, messages: Sequence[Message], items: list[Record | SampleRows], errors: list[tuple[int, RecordError]]
    ) -> None:
        self._messages, self._items, self._errors = messages, items, errors
        self._channels: tuple[str, ...] = ()
        self._indices: list[int] = []
        self._streams: list[str] = []
        self._ts: list[float] = []
        self._rows: list[list[float | None]] = []

    def add(self, i: int, stream: str, ts: float, values: dict[str, float | None]) -> None:
        channels = tuple(values)
        if channels != self._channels:
            self.close()
            self._channels = channels
        self._indices.append(i)
        self._streams.append(stream)
        self._ts.append(ts)
        self._rows.append(list(values.values()))

    def close(self) -> None:
        if self._streams:
            ts = np.array(self._ts, dtype=np.float64)
            values = np.array(self._rows, dtype=np.float64)  # null -> NaN, as in the careful path
            if _extreme(ts) or _extreme(values):
                # msgspec rounds integers just beyond the float range to the largest float; the careful path
                # refuses them. Rare enough to decode those messages again, one by one.
                for i in self._indices:
                    _decode_one(i, self._messages[i], self._items, self._errors)
            else:
                self._items.append(SampleRows(self._streams, ts, values, self._channels))
        self._indices, self._streams, self._ts, self._rows = [], [], [], []


def _extreme(values: npt.NDArray[np.float64]) -> bool:
    return bool((np.abs(values) >= _MAX_FLOAT).any())


def decode_message(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Record:
    """Decode one message into a SensorRecord or AudioRecord; raises RecordError(reason=...) when it is invalid."""
    for name, _value in headers:
        if name == FORMAT_HEADER:
            return decode_audio(key, value, headers)
    return decode_sensor(key, value)


def decode_sensor(key: bytes | None, value: bytes | None) -> SensorRecord:
    """A sensor sample or batch from its JSON value; the stream comes from the ``stream`` field, else the key."""
    obj = _parse_json(value)
    stream = _stream(obj.get("stream"), key)
    try:
        ts, values = obj["ts"], obj["values"]
    except KeyError as exc:
        raise RecordError(f"stream {stream}: the record has no {exc.args[0]!r} field", reason="missing_field") from None
    if type(values) is not dict or not values:
        raise RecordError(f"stream {stream}: 'values' must be a non-empty object", reason="invalid_field")
    if type(ts) is list:
        return _batch(stream, ts, values)
    return SensorRecord(stream, np.array([_timestamp(stream, ts)]), _sample_row(stream, values), tuple(values))


def _parse_json(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise RecordError("the message has no value", reason="empty_value")
    try:
        obj = _DECODER.decode(value.decode("utf-8"))
    except RecursionError:
        raise RecordError("the value is not JSON: nested too deeply", reason="invalid_json") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise RecordError(f"the value is not JSON: {exc}", reason="invalid_json") from None
    if type(obj) is not dict:
        raise RecordError(f"the value must be a JSON object, not {type(obj).__name__}", reason="invalid_json")
    return obj


def _stream(field: Any, key: bytes | None) -> str:
    if field is None:
        if not key:
            raise RecordError("no stream id: neither a 'stream' field nor a message key", reason="no_stream")
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("the message key (stream id) is not UTF-8", reason="no_stream") from None
    if type(field) is not str or not field:
        raise RecordError("'stream' must be a non-empty string", reason="invalid_field")
    return field


def _timestamp(stream: str, ts: Any) -> float:
    t = type(ts)
    if (t is float and -_INF < ts < _INF) or (t is int and -_MAX_FLOAT <= ts <= _MAX_FLOAT):
        return float(ts)
    raise RecordError(
        f"stream {stream}: 'ts' must be a finite number of epoch seconds, got {ts!r}", reason="invalid_field"
    )


def _sample_row(stream: str, values: dict[str, Any]) -> npt.NDArray[np.float64]:
    row: list[float] = []
    for name, v in values.items():
        t = type(v)
        # Exact type checks: bool is an int subclass but not a JSON number; strings are never coerced.
        if (t is float and -_INF < v < _INF) or t is int:
            row.append(v)
        elif v is None:
            row.append(_NAN)
        else:
            raise _bad_value(stream, name, v)
    return _float_array(stream, [row])


def _batch(stream: str, ts: list[Any], values: dict[str, Any]) -> SensorRecord:
    if not ts:
        raise RecordError(f"stream {stream}: 'ts' is an empty list", reason="invalid_field")
    times = _float_array(stream, [_timestamp(stream, t) for t in ts])
    columns = [_column(stream, name, col, len(ts)) for name, col in values.items()]
    return SensorRecord(stream, times, _float_array(stream, columns).T.copy(), tuple(values))


def _column(stream: str, name: str, col: Any, n: int) -> list[float]:
    if type(col) is not list:
        raise RecordError(f"stream {stream}: in a batch, channel {name!r} must be a list", reason="invalid_field")
    if len(col) != n:
        raise RecordError(
            f"stream {stream}: channel {name!r} has {len(col)} values for {n} timestamps", reason="length_mismatch"
        )
    for v in col:
        t = type(v)
        if not ((t is float and -_INF < v < _INF) or t is int):
            # Rare: nulls (or an error) in the column; build the cleaned copy only then.
            return [_number_or_nan(stream, name, x) for x in col]
    return col


def _number_or_nan(stream: str, name: str, v: Any) -> float:
    t = type(v)
    if (t is float and -_INF < v < _INF) or t is int:
        return float(v)
    if v is None:
        return _NAN
    raise _bad_value(stream, name, v)


def _bad_value(stream: str, name: str, v: Any) -> RecordError:
    return RecordError(
        f"stream {stream}: channel {name!r} must be a finite number or null, got {v!r}", reason="invalid_field"
    )


def _float_array(stream: str, data: list[Any]) -> npt.NDArray[np.float64]:
    try:
        return np.array(data, dtype=np.float64)
    except OverflowError:  # an integer beyond the float64 range
        raise RecordError(f"stream {stream}: a number is too large for float64", reason="invalid_field") from None


def decode_audio(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> AudioRecord:
    """A PCM chunk: interleaved little-endian samples, described by the ``format``/``sample_rate``/... headers."""
    if not key:
        raise RecordError("an audio chunk needs the stream id as its message key", reason="no_stream")
    stream = _stream(None, key)
    h = _audio_headers(stream, headers)
    dtype = AUDIO_FORMATS.get(h["format"])
    if dtype is None:
        raise RecordError(f"stream {stream}: format {h['format']!r} is not s16le or f32le", reason="invalid_field")
    rate, channels = _positive_int(stream, h, "sample_rate"), _positive_int(stream, h, "channels")
    ts = _timestamp(stream, _header_float(stream, h["ts"]))
    samples = _pcm(stream, value or b"", dtype, channels)
    return AudioRecord(stream, ts, samples, rate)


def _audio_headers(stream: str, headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, raw in headers:
        if name in ("format", "sample_rate", "channels", "ts"):
            try:
                found[name] = raw.decode("ascii")
            except (AttributeError, UnicodeDecodeError):
                raise RecordError(
                    f"stream {stream}: header {name!r} is not ASCII text", reason="invalid_field"
                ) from None
    for name in ("format", "sample_rate", "channels", "ts"):
        if name not in found:
            raise RecordError(f"stream {stream}: audio chunk without the {name!r} header", reason="missing_field")
    return found


def _positive_int(stream: str, h: dict[str, str], name: str) -> int:
    text = h[name]
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise RecordError(
            f"stream {stream}: header {name!r} must be a positive integer, got {text!r}", reason="invalid_field"
        )
    return int(text)


def _header_float(stream: str, text: str) -> float:
    # Stricter than float(): no "inf", "nan", spaces or underscores (the pattern of docs/schemas/audio-headers).
    if not _DECIMAL.fullmatch(text):
        raise RecordError(f"stream {stream}: header 'ts' must be epoch seconds, got {text!r}", reason="invalid_field")
    return float(text)


def _pcm(stream: str, value: bytes, dtype: np.dtype[Any], channels: int) -> npt.NDArray[np.float32]:
    frame = dtype.itemsize * channels
    if not value:
        raise RecordError(f"stream {stream}: the audio chunk is empty", reason="invalid_audio")
    if len(value) % frame:
        raise RecordError(
            f"stream {stream}: {len(value)} bytes is not a whole number of {frame}-byte frames",
            reason="length_mismatch",
        )
    raw = np.frombuffer(value, dtype=dtype)
    if dtype.kind == "i":
        samples = raw.astype(np.float32) * _S16_SCALE
    else:
        samples = raw.astype(np.float32)
        if not np.isfinite(samples).all():
            raise RecordError(f"stream {stream}: the f32le chunk holds NaN or infinity", reason="invalid_audio")
    return samples.reshape(-1, channels) if channels > 1 else samples


# --- dead letters: how a record that failed here is kept (docs/records.md) -----------------------------------------


def dead_letter(error: RecordError, *, value: bytes | None, topic: str, partition: int, offset: int) -> DeadLetter:
    """The dead letter of a Kafka message that `decode_message` rejected with `error`."""
    return DeadLetter(
        source=kafka_source(topic, partition, offset),
        reason=error.reason,
        message=str(error),
        payload=payload_text(value),
    )


def kafka_source(topic: str, partition: int, offset: int) -> str:
    """`DeadLetter.source` of a Kafka record (topic names cannot hold ':', so it parses back).

    >>> kafka_source("sensors", 3, 1200)
    'kafka:sensors:3:1200'
    """
    return f"kafka:{topic}:{partition}:{offset}"


def payload_text(raw: bytes | None) -> str | None:
    """`DeadLetter.payload` of an original message value: the text when it is UTF-8, else `base64:<base64>`.

    >>> payload_text(b'{"ts": 1}'), payload_text(b"\\xff\\x00")
    ('{"ts": 1}', 'base64:/wA=')
    """
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    # Text that happens to start with the prefix is encoded as well, so the payload always maps back exactly.
    if text is None or text.startswith(BASE64_PREFIX):
        return BASE64_PREFIX + base64.b64encode(raw).decode("ascii")
    return text
