"""Stage 1, source, the hot path: a whole poll of messages decoded at once into columnar SampleRows blocks.

The daemon reads tens of thousands of single-sample sensor messages per second on one core, where building one
record object per message costs more than scoring it. `decode_batch` therefore:

- parses a clean poll (ASCII JSON, no audio chunk, the same channel names in any key order) with one typed msgspec call
  (`decode_lines`, one line per message, the channels decoded into a struct made for that set of names) into one
  `SampleRows` block: stream ids, a timestamp array and a value matrix;
- otherwise goes message by message: single samples through a msgspec decoder into blocks of consecutive samples
  with the same channels, anything else through `decode_message` (the careful path, which names what is wrong).

msgspec alone would disagree with the careful path in corners (UTF-8 in fields it skips, integers just beyond the
float range, integers of more than 4,300 digits, deep nesting); each is guarded here, so both paths accept and
refuse exactly the same messages (tests/test_decode.py holds them to it).

>>> items, errors = decode_batch([(b"p", b'{"ts": 1.5, "values": {"a": 1, "b": null}}', [])])
>>> items[0].streams, items[0].channels, items[0].values.tolist()
(['p'], ('a', 'b'), [[1.0, nan]])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from ae_monitor.errors import RecordError
from ae_monitor.records import Record, SampleRows
from ae_monitor.sources.decode import FORMAT_HEADER, MAX_FLOAT, Headers, decode_message

Message = tuple[bytes | None, bytes | None, Headers]
Errors = list[tuple[int, RecordError]]
# Longer values take the careful path: it refuses integers of more than 4,300 digits (Python's conversion limit),
# which msgspec would take, and single samples are far shorter.
_FAST_MAX_BYTES = 4096


def decode_batch(messages: Sequence[Message], *, tags: Sequence[str] = ()) -> tuple[list[Record | SampleRows], Errors]:
    """Decode messages in order: (records and SampleRows blocks, holding the good messages in their order;
    (message index, error) of the others). Consecutive single-sample sensor messages with the same channels share one
    SampleRows block; every other message becomes what `decode_message` makes of it. `tags`: routing fields to keep
    (see `decode_message`)."""
    tags = tuple(tags)
    whole = _all_at_once(messages, tags)
    if whole is not None:
        return [whole], []
    items: list[Record | SampleRows] = []
    errors: Errors = []
    block = _Block(messages, items, errors, tags)
    for i, (key, value, headers) in enumerate(messages):
        sample = _one_sample(key, value, headers, tags)
        if sample is not None:
            block.add(i, sample)
        else:
            block.close()
            _decode_one(i, messages[i], tags, items, errors)
    block.close()
    return items, errors


def _all_at_once(messages: Sequence[Message], tags: tuple[str, ...]) -> SampleRows | None:
    """The common poll as one SampleRows; None when any message needs a closer look."""
    values = [value for _, value, _ in messages if value]
    if not values or len(values) < len(messages) or any(_is_audio(headers) for _, _, headers in messages):
        return None
    joined = b"\n".join(values)
    # One line per message: no value holds a newline (nor is blank, which decode_lines would skip).
    if not joined.isascii() or joined.count(b"\n") != len(values) - 1 or max(map(len, values)) > _FAST_MAX_BYTES:
        return None
    try:
        channels = tuple(_generic_decoder(tags).decode(values[0]).values)
        samples = _typed_decoder(channels, tags).decode_lines(joined) if channels else []
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
    columns = {name: list(map(attrgetter(f"t{k}"), samples)) for k, name in enumerate(tags)}
    return SampleRows(streams, ts, rows, channels, columns)


def _is_audio(headers: Headers) -> bool:
    # Other headers (tracing, schema ids) do not matter to a sensor record.
    return bool(headers) and any(name == FORMAT_HEADER for name, _ in headers)


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


StructField = tuple[str, Any] | tuple[str, Any, Any]


def _tag_fields(tags: tuple[str, ...]) -> list[StructField]:
    return [(f"t{k}", str | None, None) for k in range(len(tags))]


def _tag_names(tags: tuple[str, ...]) -> dict[str, str]:
    return {f"t{k}": name for k, name in enumerate(tags)}


@functools.lru_cache(maxsize=32)
def _generic_decoder(tags: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder of single samples with any channels (a dict), and the routing fields `tags`."""
    fields: list[StructField] = [("ts", float), ("values", dict[str, float | None]), ("stream", str | None, None)]
    fields += _tag_fields(tags)
    return msgspec.json.Decoder(msgspec.defstruct("Sample", fields, rename=_tag_names(tags)))


@functools.lru_cache(maxsize=32)
def _typed_decoder(channels: tuple[str, ...], tags: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder of single samples with exactly these channels (a missing or unknown one fails the decode)."""
    names = {f"c{i}": name for i, name in enumerate(channels)}
    values = msgspec.defstruct("Values", [(field, float | None) for field in names], rename=names,
                               forbid_unknown_fields=True)  # fmt: skip
    fields: list[StructField] = [("ts", float), ("values", values), ("stream", str | None, None)]
    fields += _tag_fields(tags)
    return msgspec.json.Decoder(msgspec.defstruct("TypedSample", fields, rename=_tag_names(tags)))


def _one_sample(key: bytes | None, value: bytes | None, headers: Headers, tags: tuple[str, ...]) -> Any | None:
    """A valid single-sample sensor message, decoded (its stream resolved); None sends it down the careful path."""
    if not value or len(value) > _FAST_MAX_BYTES or _is_audio(headers):
        return None
    try:
        if not value.isascii():
            value.decode("utf-8")  # msgspec does not check the UTF-8 of fields it skips; the careful path does
        sample = _generic_decoder(tags).decode(value)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    if sample.stream is None and key:
        try:
            sample.stream = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return sample if sample.stream and sample.values else None


def _decode_one(i: int, message: Message, tags: tuple[str, ...], items: list[Record | SampleRows],
                errors: Errors) -> None:  # fmt: skip
    try:
        items.append(decode_message(*message, tags=tags))
    except RecordError as exc:
        errors.append((i, exc))


class _Block:
    """Consecutive single samples with the same channels, on their way into one SampleRows."""

    def __init__(self, messages: Sequence[Message], items: list[Record | SampleRows], errors: Errors,
                 tags: tuple[str, ...]) -> None:  # fmt: skip
        self._messages, self._items, self._errors, self._tags = messages, items, errors, tags
        self._channels: tuple[str, ...] = ()
        self._indices: list[int] = []
        self._samples: list[Any] = []

    def add(self, i: int, sample: Any) -> None:
        channels = tuple(sample.values)
        if channels != self._channels:
            self.close()
            self._channels = channels
        self._indices.append(i)
        self._samples.append(sample)

    def close(self) -> None:
        if self._samples:
            self._emit()
        self._indices, self._samples = [], []

    def _emit(self) -> None:
        samples = self._samples
        ts = np.array([s.ts for s in samples], dtype=np.float64)
        values = np.array([list(s.values.values()) for s in samples], dtype=np.float64)  # null -> NaN
        if _extreme(ts) or _extreme(values):
            # msgspec rounds integers just beyond the float range to the largest float; the careful path refuses
            # them. Rare enough to decode those messages again, one by one.
            for i in self._indices:
                _decode_one(i, self._messages[i], self._tags, self._items, self._errors)
            return
        columns = {name: [getattr(s, f"t{k}") for s in samples] for k, name in enumerate(self._tags)}
        self._items.append(SampleRows([s.stream for s in samples], ts, values, self._channels, columns))


def _extreme(values: npt.NDArray[np.float64]) -> bool:
    return bool((np.abs(values) >= MAX_FLOAT).any())
