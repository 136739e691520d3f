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

This is the careful path: it parses JSON once, checks types by hand and names what is wrong. The daemon's hot path
(`ae_monitor.sources.batch.decode_batch`) decodes whole polls of single-sample messages with msgspec and hands
anything it does not take to `decode_message`; both accept and refuse exactly the same messages.

>>> rec = decode_message(None, b'{"stream": "p", "ts": 1.5, "values": {"a": 1, "b": null}}', ())
>>> rec.stream, rec.channels, rec.values.shape
('p', ('a', 'b'), (1, 2))
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.errors import DataError, RecordError, SampleRateError
from ae_monitor.records import AudioRecord, DeadLetter, Record, SensorRecord

FORMAT_HEADER = "format"
BASE64_PREFIX = "base64:"  # a DeadLetter.payload of bytes that are not UTF-8 text
AUDIO_FORMATS: dict[str, np.dtype[Any]] = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
_S16_SCALE = np.float32(1.0 / 32768.0)
_NAN = math.nan
_INF = math.inf
MAX_FLOAT = 1.7976931348623157e308
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity literals; they are not JSON (RFC 8259), so they are rejected here.
    raise ValueError(f"{name} is not a JSON value")


# One decoder built once: json.loads with keyword arguments would build a new decoder per message.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


Headers = Sequence[tuple[str, bytes]]


def decode_message(key: bytes | None, value: bytes | None, headers: Headers, *, tags: Sequence[str] = ()) -> Record:
    """Decode one message into a SensorRecord or AudioRecord; raises RecordError(reason=...) when it is invalid.

    `tags`: routing fields to keep (top-level string fields of a sensor record, headers of an audio chunk)."""
    for name, _value in headers:
        if name == FORMAT_HEADER:
            return decode_audio(key, value, headers, tags=tags)
    return decode_sensor(key, value, tags=tags)


def decode_sensor(key: bytes | None, value: bytes | None, *, tags: Sequence[str] = ()) -> SensorRecord:
    """A sensor sample or batch from its JSON value; the stream comes from the ``stream`` field, else the key."""
    obj = _parse_json(value)
    stream = _stream(obj.get("stream"), key)
    try:
        ts, values = obj["ts"], obj["values"]
    except KeyError as exc:
        raise RecordError(f"stream {stream}: the record has no {exc.args[0]!r} field", reason="missing_field") from None
    if type(values) is not dict or not values:
        raise RecordError(f"stream {stream}: 'values' must be a non-empty object", reason="invalid_field")
    found = _json_tags(stream, obj, tags)
    if type(ts) is list:
        return replace(_batch(stream, ts, values), tags=found)
    row = _sample_row(stream, values)
    return SensorRecord(stream, np.array([_timestamp(stream, ts)]), row, tuple(values), found)


def _json_tags(stream: str, obj: dict[str, Any], tags: Sequence[str]) -> dict[str, str]:
    found = {}
    for name in tags:
        value = obj.get(name)
        if value is None:
            continue
        if type(value) is not str:
            raise RecordError(f"stream {stream}: routing field {name!r} must be a string, got {value!r}",
                              reason="invalid_field")  # fmt: skip
        found[name] = value
    return found


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
    if (t is float and -_INF < ts < _INF) or (t is int and -MAX_FLOAT <= ts <= MAX_FLOAT):
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


def decode_audio(key: bytes | None, value: bytes | None, headers: Headers, *, tags: Sequence[str] = ()) -> AudioRecord:
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
    return AudioRecord(stream, ts, samples, rate, _header_tags(stream, headers, tags))


def _header_tags(stream: str, headers: Headers, tags: Sequence[str]) -> dict[str, str]:
    return _header_texts(stream, headers, tags, "utf-8")


_AUDIO_HEADERS = ("format", "sample_rate", "channels", "ts")


def _audio_headers(stream: str, headers: Headers) -> dict[str, str]:
    found = _header_texts(stream, headers, _AUDIO_HEADERS, "ascii")
    for name in _AUDIO_HEADERS:
        if name not in found:
            raise RecordError(f"stream {stream}: audio chunk without the {name!r} header", reason="missing_field")
    return found


def _header_texts(stream: str, headers: Headers, names: Sequence[str], encoding: str) -> dict[str, str]:
    """The headers called one of `names`, decoded; RecordError(invalid_field) when one is not `encoding` text."""
    found: dict[str, str] = {}
    for name, raw in headers:
        if name in names:
            try:
                found[name] = raw.decode(encoding)
            except (AttributeError, UnicodeDecodeError):
                kind = "ASCII" if encoding == "ascii" else "UTF-8"
                message = f"stream {stream}: header {name!r} is not {kind} text"
                raise RecordError(message, reason="invalid_field") from None
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


def record_dead_letter(record: Record, exc: RecordError | DataError) -> DeadLetter:
    """The dead letter of a record that decoded but could not be scored (routing, intake or features refused it)."""
    if isinstance(exc, RecordError):
        reason = exc.reason
    else:
        reason = "sample_rate" if isinstance(exc, SampleRateError) else "invalid_record"
    return DeadLetter(source=record.stream, reason=reason, message=str(exc), payload=record_payload(record))


def kafka_source(topic: str, partition: int, offset: int) -> str:
    """`DeadLetter.source` of a Kafka record (topic names cannot hold ':', so it parses back).

    >>> kafka_source("sensors", 3, 1200)
    'kafka:sensors:3:1200'
    """
    return f"kafka:{topic}:{partition}:{offset}"


def record_payload(record: Record) -> str:
    """`DeadLetter.payload` of a record that decoded but could not be scored: the record in its wire format again.

    A sensor record becomes the batch JSON format (NaN as null, routing tags as fields); an audio chunk becomes
    `base64:` + its samples as f32le (the sample rate is in the letter's message).

    >>> record_payload(decode_message(b"p", b'{"ts": 1.5, "values": {"a": 1, "b": null}}', ()))
    '{"stream": "p", "ts": [1.5], "values": {"a": [1.0], "b": [null]}}'
    """
    if isinstance(record, AudioRecord):
        raw = np.ascontiguousarray(record.samples, dtype="<f4").tobytes()
        return BASE64_PREFIX + base64.b64encode(raw).decode("ascii")
    columns = {
        name: [None if math.isnan(v) else v for v in record.values[:, c].tolist()]
        for c, name in enumerate(record.channels)
    }
    return json.dumps({**record.tags, "stream": record.stream, "ts": record.ts_s.tolist(), "values": columns})


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
