"""File loaders: audio files and sensor CSVs as arrays, with errors that name the file, row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ae_monitor.config import SensorConfig
from ae_monitor.errors import DataError
from ae_monitor.sources.files import (
    audio_label,
    list_audio_files,
    list_sensor_files,
    read_audio,
    read_sensor_csv,
)

SKAB_CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


# --- audio -----------------------------------------------------------------------------------------------------


def test_mono_wav_reads_as_one_dimensional_float32(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", np.linspace(-0.5, 0.5, 1000))
    samples, rate = read_audio(path)
    assert (samples.shape, samples.dtype, rate) == ((1000,), np.float32, 16000)
    assert abs(samples[-1] - 0.5) < 1e-4


def test_multichannel_wav_reads_as_samples_by_channels(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", np.zeros((500, 8)))
    samples, _ = read_audio(path)
    assert samples.shape == (500, 8)


@pytest.mark.shared_data
def test_mimii_wave_format_extensible_file_reads_with_its_eight_channels(shared_data: Path) -> None:
    samples, rate = read_audio(shared_data / "audio/mimii/fan_normal.wav")
    assert (samples.shape, rate) == ((160000, 8), 16000)


def test_unreadable_audio_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.wav", "not audio")
    with pytest.raises(DataError, match=r"broken\.wav"):
        read_audio(path)


def test_audio_folders_are_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    for name in ("fan/train/normal_id_00_2.wav", "fan/train/normal_id_00_1.flac", "fan/test/anomaly_id_00_1.wav"):
        write_wav(tmp_path / name, np.zeros(10))
    write(tmp_path / "fan/readme.txt", "not audio")
    found = [p.relative_to(tmp_path).as_posix() for p in list_audio_files(tmp_path)]
    assert found == ["fan/test/anomaly_id_00_1.wav", "fan/train/normal_id_00_1.flac", "fan/train/normal_id_00_2.wav"]
    assert list_audio_files(tmp_path / "fan/train") == sorted((tmp_path / "fan/train").glob("*.*"))


def test_a_single_audio_file_lists_itself(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "x.wav", np.zeros(10))
    assert list_audio_files(path) == [path]


def test_a_folder_without_audio_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no audio"):
        list_audio_files(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        list_audio_files(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("normal_id_06_00000933.wav", 0),
        ("anomaly_id_06_00000100.wav", 1),
        ("fan_normal.wav", 0),
        ("fan_abnormal.wav", 1),
        ("section_00_source_test_anomaly_0001_vel_6.wav", 1),
        ("recording.wav", None),
    ],
)
def test_audio_label_follows_dcase_and_mimii_file_names(name: str, label: int | None) -> None:
    assert audio_label(Path("machine/test") / name) == label


# --- sensor CSV ------------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_skab_file_loads_as_it_is(shared_data: Path) -> None:
    table = read_sensor_csv(shared_data / "skab/valve1/0.csv", SensorConfig())
    assert table.channels == SKAB_CHANNELS
    assert table.values.shape == (len(table), 8)
    assert table.labels is not None
    assert set(np.unique(table.labels).tolist()) == {0, 1}
    assert table.ts_s[1] - table.ts_s[0] == 1.0
    assert table.ts_s[0] == 1583748873.0  # 2020-03-09 10:14:33, naive times are UTC


@pytest.mark.shared_data
def test_skab_anomaly_free_file_has_9405_rows_and_no_labels(shared_data: Path) -> None:
    table = read_sensor_csv(shared_data / "skab/anomaly-free/anomaly-free.csv", SensorConfig())
    assert table.values.shape == (9405, 8)
    assert table.labels is None


def test_comma_separated_csv_with_epoch_seconds_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime,temp,load,anomaly\n100.5,20.0,0.5,0\n101.5,21.0,0.7,1\n")
    table = read_sensor_csv(path, SensorConfig())
    assert table.channels == ("temp", "load")
    np.testing.assert_array_equal(table.ts_s, [100.5, 101.5])
    np.testing.assert_array_equal(table.values, [[20.0, 0.5], [21.0, 0.7]])
    assert table.labels is not None
    assert table.labels.tolist() == [0, 1]


def test_the_configured_separator_and_iso_times_with_offsets_are_honoured(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime|x\n2020-01-01T01:00:00+01:00|1\n")
    table = read_sensor_csv(path, SensorConfig(csv_separator="|"))
    assert table.ts_s.tolist() == [1577836800.0]


def test_configured_channels_come_back_in_config_order(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;a;b;c\n1;1;2;3\n")
    table = read_sensor_csv(path, SensorConfig(channels=("c", "a")))
    assert table.channels == ("c", "a")
    assert table.values.tolist() == [[3.0, 1.0]]


def test_a_missing_channel_is_named_with_the_available_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;a;b\n1;1;2\n")
    with pytest.raises(DataError, match=r"\['pressure'\] not found; the columns are \['datetime', 'a', 'b'\]"):
        read_sensor_csv(path, SensorConfig(channels=("a", "pressure")))


def test_a_non_numeric_cell_names_file_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;a;b\n1;1;2\n2;1;oops\n")
    with pytest.raises(DataError, match=r"m\.csv: line 3 \(data row 1\), column 'b': 'oops' is not a number"):
        read_sensor_csv(path, SensorConfig())


def test_non_numeric_columns_are_not_channels_unless_configured(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;site;a\n1;north;5\n")
    assert read_sensor_csv(path, SensorConfig()).channels == ("a",)


def test_empty_cells_are_missing_values(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;a;b\n1;;2\n2;3;nan\n")
    values = read_sensor_csv(path, SensorConfig()).values
    assert np.isnan(values[0, 0])
    assert np.isnan(values[1, 1])


def test_rows_selects_data_rows_with_slice_semantics(tmp_path: Path) -> None:
    body = "".join(f"{i};{i * 10}\n" for i in range(10))
    path = write(tmp_path / "m.csv", "datetime;a\n" + body)
    table = read_sensor_csv(path, SensorConfig(), rows=slice(4, None, 3))
    assert table.values[:, 0].tolist() == [40.0, 70.0]
    assert table.ts_s.tolist() == [4.0, 7.0]


def test_without_a_time_column_time_is_row_index_times_sample_period(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "a,b\n1,2\n3,4\n5,6\n")
    table = read_sensor_csv(path, SensorConfig(sample_period_s=0.5), rows=slice(1, None))
    assert table.ts_s.tolist() == [0.5, 1.0]
    assert table.channels == ("a", "b")


def test_a_row_with_the_wrong_number_of_fields_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;a\n1;2\n2;3;4\n")
    with pytest.raises(DataError, match="line 3 has 3 fields"):
        read_sensor_csv(path, SensorConfig())


def test_a_bad_time_value_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "datetime;a\nyesterday;2\n")
    with pytest.raises(DataError, match="'yesterday' is neither an ISO datetime nor epoch seconds"):
        read_sensor_csv(path, SensorConfig())


def test_sensor_folders_are_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    for name in ("valve2/0.csv", "valve1/1.csv", "valve1/0.csv"):
        write(tmp_path / name, "a\n1\n")
    write(tmp_path / "notes.txt", "")
    found = [p.relative_to(tmp_path).as_posix() for p in list_sensor_files(tmp_path)]
    assert found == ["valve1/0.csv", "valve1/1.csv", "valve2/0.csv"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CSV"):
        list_sensor_files(tmp_path / "empty")
