"""Record formats: what decode_message accepts, what it rejects (and why), and that it agrees with the schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from ae_monitor.errors import RecordError
from ae_monitor.records import AudioRecord, SampleRows, SensorRecord
from ae_monitor.sources.batch import decode_batch
from ae_monitor.sources.decode import dead_letter, decode_message, payload_text

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


SENSOR_SCHEMAS = [_schema("sensor-sample.schema.json"), _schema("sensor-batch.schema.json")]
AUDIO_SCHEMA = _schema("audio-headers.schema.json")


def _sensor(obj: Any, key: bytes | None = None) -> SensorRecord:
    record = decode_message(key, json.dumps(obj).encode(), [])
    assert isinstance(record, SensorRecord)
    return record


def _reason(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> str:
    with pytest.raises(RecordError) as info:
        decode_message(key, value, headers or [])
    return info.value.reason


# --- sensor, one sample -------------------------------------------------------------------------------------------


def test_one_sample_becomes_a_one_row_record_with_channels_in_message_order() -> None:
    rec = _sensor({"stream": "pump-7", "ts": 1732600000.25, "values": {"temp": 33.1, "pressure": 1.2}})
    assert rec.stream == "pump-7"
    assert rec.channels == ("temp", "pressure")
    np.testing.assert_array_equal(rec.ts_s, [1732600000.25])
    np.testing.assert_array_equal(rec.values, [[33.1, 1.2]])
    assert rec.values.dtype == np.float64
    assert rec.ts_s.dtype == np.float64


def test_stream_comes_from_the_key_when_the_value_has_none() -> None:
    assert _sensor({"ts": 1, "values": {"a": 2}}, key=b"pump-9").stream == "pump-9"


def test_stream_field_wins_over_the_key() -> None:
    assert _sensor({"stream": "pump-1", "ts": 1, "values": {"a": 2}}, key=b"machine-1").stream == "pump-1"


def test_null_values_become_nan() -> None:
    rec = _sensor({"stream": "s", "ts": 1, "values": {"a": None, "b": 2}})
    assert np.isnan(rec.values[0, 0])
    assert rec.values[0, 1] == 2.0


def test_integers_are_numbers() -> None:
    rec = _sensor({"stream": "s", "ts": 1732600000, "values": {"a": 3}})
    assert rec.ts_s[0] == 1732600000.0
    assert rec.values[0, 0] == 3.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty_value"),
        (None, "empty_value"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"stream": "s", "ts": NaN, "values": {"a": 1}}', "invalid_json"),
        (b'{"stream": "s", "ts": 1, "values": {"a": Infinity}}', "invalid_json"),
        (b'{"stream": "s", "values": {"a": 1}}', "missing_field"),
        (b'{"stream": "s", "ts": 1}', "missing_field"),
        (b'{"ts": 1, "values": {"a": 1}}', "no_stream"),
        (b'{"stream": "", "ts": 1, "values": {"a": 1}}', "invalid_field"),
        (b'{"stream": 7, "ts": 1, "values": {"a": 1}}', "invalid_field"),
        (b'{"stream": "s", "ts": "1", "values": {"a": 1}}', "invalid_field"),
        (b'{"stream": "s", "ts": true, "values": {"a": 1}}', "invalid_field"),
        (b'{"stream": "s", "ts": 1e999, "values": {"a": 1}}', "invalid_field"),
        (b'{"stream": "s", "ts": 1, "values": {}}', "invalid_field"),
        (b'{"stream": "s", "ts": 1, "values": [1, 2]}', "invalid_field"),
        (b'{"stream": "s", "ts": 1, "values": {"a": "1.5"}}', "invalid_field"),
        (b'{"stream": "s", "ts": 1, "values": {"a": true}}', "invalid_field"),
        (b'{"stream": "s", "ts": 1, "values": {"a": 1e999}}', "invalid_field"),
        (b'{"stream": "s", "ts": 1, "values": {"a": [1]}}', "invalid_field"),
    ],
)
def test_invalid_sensor_messages_are_rejected_with_their_reason(value: bytes | None, reason: str) -> None:
    assert _reason(None, value) == reason


def test_an_integer_beyond_float64_is_rejected() -> None:
    assert _reason(None, b'{"stream": "s", "ts": 1, "values": {"a": 1' + b"0" * 400 + b"}}") == "invalid_field"


def test_the_error_message_names_the_stream_and_the_channel() -> None:
    with pytest.raises(RecordError, match=r"stream pump-3: channel 'temp' must be a finite number or null"):
        decode_message(None, b'{"stream": "pump-3", "ts": 1, "values": {"temp": "hot"}}', [])


# --- sensor, a batch ----------------------------------------------------------------------------------------------


def test_a_batch_becomes_an_n_by_channels_record() -> None:
    rec = _sensor({"stream": "s", "ts": [1.0, 2.0, 3.0], "values": {"a": [1, 2, 3], "b": [4.5, None, 6.5]}})
    assert rec.values.shape == (3, 2)
    assert rec.values.flags.c_contiguous
    np.testing.assert_array_equal(rec.ts_s, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(rec.values[:, 0], [1, 2, 3])
    assert np.isnan(rec.values[1, 1])
    assert rec.channels == ("a", "b")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"stream": "s", "ts": [], "values": {"a": []}}, "invalid_field"),
        ({"stream": "s", "ts": [1, 2], "values": {"a": [1]}}, "length_mismatch"),
        ({"stream": "s", "ts": [1, 2], "values": {"a": [1, 2], "b": [1, 2, 3]}}, "length_mismatch"),
        ({"stream": "s", "ts": [1, "2"], "values": {"a": [1, 2]}}, "invalid_field"),
        ({"stream": "s", "ts": [1, None], "values": {"a": [1, 2]}}, "invalid_field"),
        ({"stream": "s", "ts": [1, 2], "values": {"a": 1}}, "invalid_field"),
        ({"stream": "s", "ts": [1, 2], "values": {"a": [1, "x"]}}, "invalid_field"),
        ({"stream": "s", "ts": [1, 2], "values": {"a": [1, False]}}, "invalid_field"),
        ({"stream": "s", "ts": 1, "values": {"a": [1, 2]}}, "invalid_field"),
    ],
)
def test_invalid_batches_are_rejected_with_their_reason(obj: Any, reason: str) -> None:
    assert _reason(None, json.dumps(obj).encode()) == reason


# --- audio --------------------------------------------------------------------------------------------------------


def _headers(
    fmt: str = "s16le", rate: str = "16000", channels: str = "1", ts: str = "1732600000.5"
) -> list[tuple[str, bytes]]:
    return [
        ("format", fmt.encode()),
        ("sample_rate", rate.encode()),
        ("channels", channels.encode()),
        ("ts", ts.encode()),
    ]


def _audio(value: bytes, headers: list[tuple[str, bytes]], key: bytes = b"fan-1") -> AudioRecord:
    record = decode_message(key, value, headers)
    assert isinstance(record, AudioRecord)
    return record


def test_s16le_audio_is_scaled_to_plus_minus_one() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    rec = _audio(pcm, _headers())
    assert (rec.stream, rec.ts_s, rec.sample_rate_hz) == ("fan-1", 1732600000.5, 16000)
    assert rec.samples.dtype == np.float32
    np.testing.assert_allclose(rec.samples, [0.0, 0.5, -1.0, 32767 / 32768])


def test_f32le_stereo_audio_is_deinterleaved_into_frames_by_channels() -> None:
    pcm = np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3], dtype="<f4").tobytes()
    rec = _audio(pcm, _headers("f32le", rate="48000", channels="2"))
    assert rec.samples.shape == (3, 2)
    np.testing.assert_allclose(rec.samples[:, 1], [-0.1, -0.2, -0.3], rtol=1e-6)


def test_a_format_header_makes_a_message_audio_even_when_the_value_looks_like_json() -> None:
    assert _reason(b"k", b'{"ts": 1, "values": {"a": 1}}', [("format", b"s16le")]) == "missing_field"


@pytest.mark.parametrize(
    ("key", "value", "headers", "reason"),
    [
        (None, b"\x00\x00", _headers(), "no_stream"),
        (b"fan", b"", _headers(), "invalid_audio"),
        (b"fan", b"\x00\x00\x00", _headers(), "length_mismatch"),
        (b"fan", b"\x00\x00", _headers(channels="2"), "length_mismatch"),
        (b"fan", b"\x00\x00", _headers(fmt="u8"), "invalid_field"),
        (b"fan", b"\x00\x00", _headers(rate="0"), "invalid_field"),
        (b"fan", b"\x00\x00", _headers(rate="16k"), "invalid_field"),
        (b"fan", b"\x00\x00", _headers(channels="-1"), "invalid_field"),
        (b"fan", b"\x00\x00", _headers(ts="inf"), "invalid_field"),
        (b"fan", b"\x00\x00", _headers(ts="soon"), "invalid_field"),
        (b"fan", b"\x00\x00", _headers()[:3], "missing_field"),
        (b"fan", b"\x00\x00", [*_headers()[:3], ("ts", b"\xff")], "invalid_field"),
        (b"fan", np.array([np.nan], dtype="<f4").tobytes(), _headers("f32le"), "invalid_audio"),
    ],
)
def test_invalid_audio_chunks_are_rejected_with_their_reason(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    assert _reason(key, value, headers) == reason


# --- the schemas and the decoder agree ----------------------------------------------------------------------------

SENSOR_EXAMPLES: list[Any] = [
    # good
    {"stream": "pump-7", "ts": 1732600000.25, "values": {"pressure": 1.2, "temp": 33.1}},
    {"ts": 1, "values": {"a": None}},
    {"stream": "s", "ts": 1, "values": {"a": 1}, "site": "plant-2"},
    {"stream": "s", "ts": [1, 2], "values": {"a": [1, None], "b": [0.5, 2]}},
    # bad
    {"stream": "s", "values": {"a": 1}},
    {"stream": "s", "ts": 1},
    {"stream": "", "ts": 1, "values": {"a": 1}},
    {"stream": "s", "ts": "1", "values": {"a": 1}},
    {"stream": "s", "ts": True, "values": {"a": 1}},
    {"stream": "s", "ts": None, "values": {"a": 1}},
    {"stream": "s", "ts": 1, "values": {}},
    {"stream": "s", "ts": 1, "values": {"a": "1"}},
    {"stream": "s", "ts": 1, "values": {"a": False}},
    {"stream": "s", "ts": 1, "values": {"a": [1]}},
    {"stream": "s", "ts": [], "values": {"a": []}},
    {"stream": "s", "ts": [1], "values": {"a": 1}},
    {"stream": "s", "ts": [1], "values": {"a": ["1"]}},
    {"stream": "s", "ts": [True], "values": {"a": [1]}},
    [1, 2],
    "text",
]


@pytest.mark.parametrize("example", SENSOR_EXAMPLES, ids=[json.dumps(e)[:60] for e in SENSOR_EXAMPLES])
def test_decode_accepts_exactly_what_a_sensor_schema_accepts(example: Any) -> None:
    by_schema = any(jsonschema.Draft202012Validator(s).is_valid(example) for s in SENSOR_SCHEMAS)
    try:
        decode_message(b"key-stream", json.dumps(example).encode(), [])
        by_decoder = True
    except RecordError:
        by_decoder = False
    assert by_decoder == by_schema


AUDIO_HEADER_EXAMPLES: list[dict[str, str]] = [
    {"format": "s16le", "sample_rate": "16000", "channels": "1", "ts": "1732600000.5"},
    {"format": "f32le", "sample_rate": "44100", "channels": "2", "ts": "-3", "extra": "ignored"},
    {"format": "s16le", "sample_rate": "16000", "channels": "1", "ts": "1.7e9"},
    {"format": "pcm", "sample_rate": "16000", "channels": "1", "ts": "1"},
    {"format": "s16le", "sample_rate": "0", "channels": "1", "ts": "1"},
    {"format": "s16le", "sample_rate": "1.5", "channels": "1", "ts": "1"},
    {"format": "s16le", "sample_rate": "16000", "channels": "", "ts": "1"},
    {"format": "s16le", "sample_rate": "16000", "channels": "1", "ts": "nan"},
    {"format": "s16le", "sample_rate": "16000", "channels": "1", "ts": " 1"},
    {"format": "s16le", "sample_rate": "16000", "channels": "1"},
]


@pytest.mark.parametrize("headers", AUDIO_HEADER_EXAMPLES, ids=[json.dumps(h)[:60] for h in AUDIO_HEADER_EXAMPLES])
def test_decode_accepts_exactly_the_audio_headers_the_schema_accepts(headers: dict[str, str]) -> None:
    by_schema = jsonschema.Draft202012Validator(AUDIO_SCHEMA).is_valid(headers)
    pcm = np.zeros(4, dtype="<i2").tobytes()  # whole frames for 1 or 2 channels of either format
    try:
        decode_message(b"fan", pcm, [(k, v.encode()) for k, v in headers.items()])
        by_decoder = True
    except RecordError:
        by_decoder = False
    assert by_decoder == by_schema


@pytest.mark.parametrize("name", ["sensor-sample.schema.json", "sensor-batch.schema.json"])
def test_every_schema_example_decodes(name: str) -> None:
    for example in _schema(name)["examples"]:
        jsonschema.validate(example, _schema(name))
        assert isinstance(decode_message(None, json.dumps(example).encode(), []), SensorRecord)


def test_every_json_example_in_docs_records_md_is_valid() -> None:
    text = (SCHEMAS.parent / "records.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```json\n")[1:]]
    assert len(blocks) == 3
    for block in blocks:
        example = json.loads(block)
        if "format" in example:
            jsonschema.validate(example, AUDIO_SCHEMA)
        else:
            assert any(jsonschema.Draft202012Validator(s).is_valid(example) for s in SENSOR_SCHEMAS), block
            assert isinstance(decode_message(None, block.encode(), []), SensorRecord)


def test_a_rejected_message_becomes_a_dead_letter_with_its_kafka_position_and_original_value() -> None:
    value = b'{"ts": 1, "values": {"a": 1}}'
    with pytest.raises(RecordError) as info:
        decode_message(None, value, [])
    letter = dead_letter(info.value, value=value, topic="sensors", partition=0, offset=7)
    assert (letter.source, letter.reason, letter.payload) == ("kafka:sensors:0:7", "no_stream", value.decode())
    assert "no stream id" in letter.message


def test_binary_payloads_are_kept_as_base64_text() -> None:
    assert payload_text(b"\x00\xff") == "base64:AP8="
    assert payload_text(b"base64:abc") == "base64:YmFzZTY0OmFiYw=="  # so it cannot be mistaken for encoded bytes
    assert payload_text(None) is None


# --- decode_batch: a whole poll at once, same verdicts as decode_message ------------------------------------------

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def _sample(stream: str | None, ts: float, values: dict[str, float | None], key: bytes | None = None) -> Message:
    obj: dict[str, Any] = {"ts": ts, "values": values}
    if stream is not None:
        obj["stream"] = stream
    return (key, json.dumps(obj).encode(), [])


def _kinds(items: list[Any]) -> list[str]:
    return [f"rows({len(item)})" if isinstance(item, SampleRows) else type(item).__name__ for item in items]


def test_consecutive_single_samples_with_the_same_channels_form_one_block() -> None:
    items, errors = decode_batch(
        [
            _sample("pump-1", 1.5, {"a": 1.0, "b": 2}),
            _sample(None, 2.5, {"a": None, "b": 4.0}, key=b"pump-2"),
            (b"machine", b'{"stream": "pump-3", "ts": 3, "values": {"a": 5, "b": 6}}', [("trace", b"x")]),
        ]
    )
    assert errors == []
    (block,) = items
    assert isinstance(block, SampleRows)
    assert block.streams == ["pump-1", "pump-2", "pump-3"]  # the field, else the key; the field wins
    assert block.channels == ("a", "b")
    np.testing.assert_array_equal(block.ts_s, [1.5, 2.5, 3.0])
    np.testing.assert_array_equal(block.values, [[1.0, 2.0], [np.nan, 4.0], [5.0, 6.0]])
    assert block.values.dtype == block.ts_s.dtype == np.float64


def test_a_clean_poll_is_one_block_with_channels_in_its_first_messages_order() -> None:
    # No headers, ASCII, the same channel names: parsed in one call, whatever the order of each message's keys.
    items, errors = decode_batch(
        [
            (b"pump-1", b'{"ts": 1, "values": {"a": 1, "b.x": 2}}', []),
            (b"pump-2", b'{"ts": 2, "values": {"b.x": 4, "a": 3}}', []),
            (None, b'{"stream": "pump-3", "ts": 3, "values": {"a": null, "b.x": 6}}', []),
        ]
    )
    assert errors == []
    (block,) = items
    assert isinstance(block, SampleRows)
    assert block.streams == ["pump-1", "pump-2", "pump-3"]
    assert block.channels == ("a", "b.x")
    np.testing.assert_array_equal(block.values, [[1.0, 2.0], [3.0, 4.0], [np.nan, 6.0]])


def test_a_poll_with_one_odd_message_is_decoded_message_by_message() -> None:
    items, errors = decode_batch(
        [
            (b"s", b'{"ts": 1, "values": {"a": 1}}', []),
            (b"s", b'{"ts": 2, "values": {"a": 2, "extra": 1}}', []),  # another channel set
            (b"s", b'{"ts": 3, "values": {"a": "3"}}', []),  # refused
            (b"s", b'{"ts": 4, "values": {"a": 4}}', []),
        ]
    )
    assert [i for i, _ in errors] == [2]
    assert [item.channels for item in items if isinstance(item, SampleRows)] == [("a",), ("a", "extra"), ("a",)]


def test_a_change_of_channels_closes_the_block() -> None:
    items, _ = decode_batch(
        [
            _sample("s", 1, {"a": 1, "b": 2}),
            _sample("t", 1, {"a": 1, "b": 2}),
            _sample("s", 2, {"b": 2, "a": 1}),  # same names, other order: other channels
            _sample("s", 3, {"a": 1}),
            _sample("t", 3, {"a": 1}),
        ]
    )
    assert _kinds(items) == ["rows(2)", "rows(1)", "rows(2)"]
    assert [item.channels for item in items if isinstance(item, SampleRows)] == [("a", "b"), ("b", "a"), ("a",)]


def test_batch_records_audio_chunks_and_invalid_messages_close_the_block_in_message_order() -> None:
    audio: Message = (b"fan-1", np.zeros(4, dtype="<i2").tobytes(), _headers())
    batch: Message = (None, b'{"stream": "s", "ts": [1, 2], "values": {"a": [1, 2]}}', [])
    invalid: Message = (None, b'{"stream": "s", "values": {"a": 1}}', [])
    json_with_format: Message = (b"fan-2", b'{"stream": "s", "ts": 1, "values": {"a": 1}}', [("format", b"s16le")])
    a = [_sample("s", float(i), {"a": i}) for i in range(8)]
    messages = [a[0], a[1], batch, a[2], audio, a[3], invalid, a[4], json_with_format, a[5], a[6], a[7]]
    items, errors = decode_batch(messages)
    assert _kinds(items) == ["rows(2)", "SensorRecord", "rows(1)", "AudioRecord", "rows(1)", "rows(1)", "rows(3)"]
    assert [(i, e.reason) for i, e in errors] == [(6, "missing_field"), (8, "missing_field")]
    rows = [item for item in items if isinstance(item, SampleRows)]
    assert np.concatenate([r.ts_s for r in rows]).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_an_empty_poll_decodes_to_nothing() -> None:
    assert decode_batch([]) == ([], [])


def _one_by_one(messages: list[Message]) -> list[SensorRecord | AudioRecord | RecordError]:
    out: list[SensorRecord | AudioRecord | RecordError] = []
    for key, value, headers in messages:
        try:
            out.append(decode_message(key, value, headers))
        except RecordError as exc:
            out.append(exc)
    return out


def _expanded(item: SensorRecord | AudioRecord | SampleRows) -> list[SensorRecord | AudioRecord]:
    return [item.record(i) for i in range(len(item))] if isinstance(item, SampleRows) else [item]


def _batched(messages: list[Message]) -> list[SensorRecord | AudioRecord | RecordError]:
    """decode_batch's verdict for each message, in message order (SampleRows expanded back into records)."""
    items, errors = decode_batch(messages)
    records = iter([r for item in items for r in _expanded(item)])
    failed = dict(errors)
    out = [failed[i] if i in failed else next(records) for i in range(len(messages))]
    assert next(records, None) is None
    return out


def _assert_same_verdicts(messages: list[Message]) -> None:
    for message, got, want in zip(messages, _batched(messages), _one_by_one(messages), strict=True):
        assert type(got) is type(want), message
        if isinstance(want, RecordError):
            assert isinstance(got, RecordError)
            assert (got.reason, str(got)) == (want.reason, str(want)), message
        elif isinstance(want, SensorRecord):
            assert isinstance(got, SensorRecord)
            assert (got.stream, got.channels) == (want.stream, want.channels), message
            np.testing.assert_array_equal(got.ts_s, want.ts_s)
            np.testing.assert_array_equal(got.values, want.values)  # NaN equals NaN here
            assert got.values.shape == want.values.shape
            assert got.values.dtype == got.ts_s.dtype == np.float64


TRICKY_VALUES: list[bytes] = [
    b'{"stream": "s", "ts": 1, "values": {"a": 1, "b": 2.5}}',
    b'{"stream": "s", "ts": NaN, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"a": NaN}}',
    b'{"stream": "s", "ts": 1, "values": {"a": Infinity}}',
    b'{"stream": "s", "ts": 1, "values": {"a": -Infinity}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1}, "site": NaN}',
    b'{"stream": "s", "ts": 1e400, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1e400}}',
    b'{"stream": "s", "ts": 1, "values": {"a": -1e309}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1.7976931348623157e308}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1.7976931348623159e308}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1e-400, "b": 4.9e-324}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1}, "site": 1e400}',
    b'{"stream": "s", "ts": true, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"a": false}}',
    b'{"stream": "s", "ts": 1, "values": {"a": "1.5"}}',
    b'{"stream": "s", "ts": "1", "values": {"a": 1}}',
    b'{"stream": "s", "ts": null, "values": {"a": 1}}',
    b'{"stream": "s", "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1}',
    b'{"stream": "s", "ts": 1, "values": {}}',
    b'{"stream": "s", "ts": 1, "values": [1]}',
    b'{"stream": "s", "ts": 1, "values": {"a": [1]}}',
    b'{"stream": "s", "ts": 1, "values": {"a": {"b": 1}}}',
    b'{"stream": 7, "ts": 1, "values": {"a": 1}}',
    b'{"stream": "", "ts": 1, "values": {"a": 1}}',
    b'{"stream": null, "ts": 1, "values": {"a": 1}}',
    b'{"ts": 1, "values": {"a": 1}}',
    b'{"stream": "\\ud800", "ts": 1, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"\\u00e9\\n": 1}}',
    b"{not json",
    b"",
    b"[1, 2]",
    b'"text"',
    b"null",
    b'{"stream": "s", "ts": 1, "values": {"a": 1}} trailing',
    b'{"stream": "s", "ts": 1, "values": {"a": 1},}',
    b'{"stream": "s", "ts": 1, "values": {"a": 01}}',
    b'{"stream": "s", "ts": .5, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"a": "\x01"}}',
    b'\xef\xbb\xbf{"stream": "s", "ts": 1, "values": {"a": 1}}',
    b' \n{"stream": "s", "ts": -0, "values": {"a": -0.0}}\t\r\n',
    b'{"stream": "s", "ts": 1, "values": {"a": 1' + b"0" * 400 + b"}}",
    b'{"stream": "s", "ts": 1' + b"0" * 400 + b', "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1' + b"0" * 30 + b', "values": {"a": -1' + b"0" * 30 + b"}}",
    b'{"stream": "s", "ts": 1, "values": {"a": 1' + b"0" * 5000 + b"}}",
    b'{"stream": "s", "ts": 18446744073709551616, "values": {"a": 9007199254740993}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 17976931348623159' + b"0" * 292 + b"}}",
    b'{"stream": "s", "ts": 1, "values": {"a": 1, "b": 2, "a": 3}}',
    b'{"stream": "s", "ts": 1, "values": {"a": "x", "a": 2}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 2, "a": "x"}}',
    b'{"stream": "s", "stream": "t", "ts": 1, "values": {"a": 1}}',
    b'{"stream": 7, "stream": "s", "ts": 1, "values": {"a": 1}}',
    b'{"stream": "s", "stream": 7, "ts": 1, "values": {"a": 1}}',
    b'{"stream": "s", "ts": "x", "ts": 1, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "ts": "x", "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1}, "values": {"b": 2}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1}, "values": {}}',
    b'{"stream": "s", "ts": 1, "values": 5, "values": {"a": 1}}',
    b'{"stream": "s", "ts": 1, "values": {"a": 1}, "site": "plant-2", "tags": [1, {"x": null}]}',
    b'{"stream": "s", "ts": 1, "values": {"a": null, "b": null}}',
    b'{"stream": "s", "ts": [1], "values": {"a": [null]}}',
]


@pytest.mark.parametrize("key", [None, b"key-1", b"", b"\xff\xfe"], ids=["no-key", "key", "empty-key", "non-utf8-key"])
@pytest.mark.parametrize("value", TRICKY_VALUES, ids=[v[:60].decode("utf-8", "replace") for v in TRICKY_VALUES])
def test_decode_batch_accepts_and_refuses_each_message_exactly_as_decode_message(
    key: bytes | None, value: bytes
) -> None:
    good = _sample("pump-1", 1.0, {"a": 1})
    _assert_same_verdicts([(key, value, [])])
    _assert_same_verdicts([good, (key, value, []), good, good])


def test_decode_batch_agrees_with_decode_message_on_a_shuffled_mix() -> None:
    rng = np.random.default_rng(0)
    keys = [None, b"key-1", b"\xff"]
    picks = zip(rng.integers(len(keys), size=400), rng.integers(len(TRICKY_VALUES), size=400), strict=True)
    messages: list[Message] = [(keys[k], TRICKY_VALUES[v], []) for k, v in picks]
    _assert_same_verdicts(messages)


# Corners where msgspec alone would disagree with decode_message (the fast path guards each of them).
ACCEPTED_BUT_REFUSED_ONE_BY_ONE = [
    pytest.param(b'{"stream": "s", "ts": 1, "values": {"a": 1}, "site": "\xff"}', id="invalid-utf8-in-an-extra-field"),
    pytest.param(b'{"stream": "s", "ts": 1, "values": {"a": 1}, "site": "\xc0\xaf"}', id="overlong-utf8-extra-field"),
    pytest.param(
        b'{"stream": "s", "ts": 1, "values": {"a": 1}, "n": 1' + b"0" * 5000 + b"}",
        id="int-over-4300-digits-extra-field",
    ),
    pytest.param(
        b'{"stream": "s", "ts": 17976931348623158' + b"0" * 292 + b', "values": {"a": 1}}',
        id="int-ts-above-max-float-that-rounds-to-it",
    ),
]


@pytest.mark.parametrize("value", ACCEPTED_BUT_REFUSED_ONE_BY_ONE)
def test_decode_batch_refuses_what_decode_message_refuses_even_in_fields_it_does_not_read(value: bytes) -> None:
    _assert_same_verdicts([(None, value, [])])


CRASHING_THE_FAST_PATH = [
    pytest.param(b'{"stream": "\xff", "ts": 1, "values": {"a": 1}}', id="invalid-utf8-stream"),
    pytest.param(b'{"stream": "s", "ts": 1, "values": {"\xff": 1}}', id="invalid-utf8-channel"),
    pytest.param(b'{"stream": "\xed\xa0\x80", "ts": 1, "values": {"a": 1}}', id="utf8-encoded-surrogate-stream"),
]


@pytest.mark.parametrize("value", CRASHING_THE_FAST_PATH)
def test_invalid_utf8_in_a_string_is_an_invalid_json_verdict_not_an_exception(value: bytes) -> None:
    assert _reason(None, value) == "invalid_json"
    _, errors = decode_batch([(None, value, [])])
    assert [(i, e.reason) for i, e in errors] == [(0, "invalid_json")]


def test_a_deeply_nested_value_gives_a_verdict_not_a_recursion_error() -> None:
    deep = b'{"stream": "s", "ts": 1, "values": {"a": 1}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    _assert_same_verdicts([(None, deep, [])])


# --- routing tags: the fields a `[[routes]] field` names are kept with the record ----------------------------------


def test_routing_fields_are_kept_as_tags_by_both_paths() -> None:
    value = b'{"ts": 1, "machine_type": "pump", "site": 3, "values": {"a": 1}}'
    record = decode_message(b"s", value, [], tags=("machine_type",))
    assert dict(record.tags) == {"machine_type": "pump"}
    items, errors = decode_batch(
        [(b"s", value, []), (b"t", b'{"ts": 2, "values": {"a": 2}}', [])], tags=("machine_type",)
    )
    assert errors == []
    (block,) = items
    assert isinstance(block, SampleRows)
    assert block.tags == {"machine_type": ["pump", None]}
    assert dict(block.record(0).tags) == {"machine_type": "pump"}
    assert dict(block.record(1).tags) == {}


def test_a_routing_field_that_is_not_a_string_is_an_invalid_field() -> None:
    value = b'{"ts": 1, "machine_type": 7, "values": {"a": 1}}'
    with pytest.raises(RecordError, match="routing field 'machine_type' must be a string") as info:
        decode_message(b"s", value, [], tags=("machine_type",))
    assert info.value.reason == "invalid_field"
    _, errors = decode_batch([(b"s", value, [])], tags=("machine_type",))
    assert [error.reason for _, error in errors] == ["invalid_field"]


def test_an_audio_chunks_routing_tag_is_a_header() -> None:
    headers = [("format", b"s16le"), ("sample_rate", b"16000"), ("channels", b"1"), ("ts", b"1.0"),
               ("machine_type", b"fan")]  # fmt: skip
    record = decode_message(b"mic-1", b"\x00\x00" * 10, headers, tags=("machine_type",))
    assert dict(record.tags) == {"machine_type": "fan"}
