"""Record formats: what decode_message accepts, what it rejects (and why), and that it agrees with the schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from ae_monitor.errors import RecordError
from ae_monitor.records import AudioRecord, SensorRecord
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
