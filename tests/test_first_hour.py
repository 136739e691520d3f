"""What a new user runs into first: every mistake in the table of issue 13 ends in one clear line and a non-zero
exit, never a traceback or silence."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ae_monitor import __version__
from ae_monitor.cli import main
from ae_monitor.config import config_from_dict
from ae_monitor.jobs.data import Signal, fit_extractor
from ae_monitor.jobs.train import _vectors_in, train_bundle


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def sensor_config(tmp_path: Path) -> Path:
    lines = ['[features]', 'kind = "sensor"', '[features.sensor]', 'window_samples = 30', 'hop_samples = 1',
             'sample_period_s = 1.0', '[training]', 'epochs = 2', '[metrics]', 'enabled = false']  # fmt: skip
    path = tmp_path / "sensor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def header_only(sensor_data: tuple[Path, Path], tmp_path: Path) -> Path:
    header = (sensor_data[0] / "pump-0.csv").read_text().splitlines()[0]
    path = tmp_path / "empty.csv"
    path.write_text(header + "\n")
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_training_on_a_header_only_csv_names_the_file(
    sensor_config: Path, header_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--config", str(sensor_config), "--data", str(header_only), "--out", str(tmp_path / "b")]
    assert main(args) == 2
    assert f"{header_only}: no data" in _one_line_error(capsys)


def test_rows_whose_start_is_not_before_their_end_are_refused(
    sensor_config: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--config", str(sensor_config), "--data", str(sensor_data[0]), "--out", str(tmp_path / "b"),
            "--rows", "500:100"]  # fmt: skip
    assert main(args) == 2
    assert "--rows 500:100: START must be less than END" in _one_line_error(capsys)


def test_rows_beyond_the_end_of_the_file_say_there_is_no_data(
    sensor_config: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--config", str(sensor_config), "--data", str(sensor_data[0]), "--out", str(tmp_path / "b"),
            "--rows", "90000:90100"]  # fmt: skip
    assert main(args) == 2
    assert "no data in rows 90000:90100" in _one_line_error(capsys)


def test_scoring_a_header_only_csv_fails_naming_it(
    sensor_bundle: Path, header_only: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-q", "score", "--bundle", str(sensor_bundle), str(header_only)]) == 2
    assert f"{header_only}: no data" in _one_line_error(capsys)


def test_scoring_a_csv_shorter_than_one_window_fails_naming_it(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.csv"
    short.write_text("\n".join((sensor_data[1] / "pump-1.csv").read_text().splitlines()[:11]) + "\n")
    assert main(["-q", "score", "--bundle", str(sensor_bundle), str(short)]) == 2
    err = _one_line_error(capsys)
    assert "shorter than one window of the bundle (30 rows): short (10 rows)" in err


def test_evaluate_refuses_a_report_path_that_is_a_file(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    report.write_text("mine\n")
    args = ["-q", "evaluate", "--bundle", str(sensor_bundle), "--data", str(sensor_data[1]), "--report", str(report),
            "--no-plots"]  # fmt: skip
    assert main(args) == 2
    assert "is an existing file" in _one_line_error(capsys)
    assert report.read_text() == "mine\n"


def test_demo_on_a_taken_port_names_the_port(taken_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--metrics-port", str(taken_port)]) == 2
    err = _one_line_error(capsys)
    assert f"metrics.port: cannot serve metrics on 127.0.0.1:{taken_port}" in err
    assert "--metrics-port" in err


def _replay_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "replay.toml"
    lines = ['[features]', 'kind = "sensor"', '[features.sensor]', 'window_samples = 30', 'hop_samples = 1',
             'sample_period_s = 1.0', '[metrics]', f'port = {port}', '[replay]',
             f'alerts_path = "{tmp_path / "alerts.jsonl"}"']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_on_a_taken_port_names_the_port_and_can_pick_another_or_none(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path, taken_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base = ["-q", "replay", "--config", str(_replay_config(tmp_path, taken_port)), "--bundle", str(sensor_bundle),
            "--input", str(sensor_data[1] / "pump-1.csv")]  # fmt: skip
    assert main(base) == 2
    assert f"cannot serve metrics on 127.0.0.1:{taken_port}" in _one_line_error(capsys)
    assert main([*base, "--metrics-port", "0"]) == 0
    assert main([*base, "--no-metrics"]) == 0


@pytest.fixture(scope="module")
def audio_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    t = np.arange(16000 * 3) / 16000
    for i in range(2):
        soundfile.write(root / "train" / f"normal_id_00_{i}.wav" if (root / "train").is_dir() else _mkdir(root)
                        / f"normal_id_00_{i}.wav", 0.3 * np.sin(2 * np.pi * 120 * t), 16000)  # fmt: skip
    config = config_from_dict({"features": {"kind": "logmel", "logmel": {"score_window_s": 0.25,
                                                                         "score_hop_s": 0.125}},
                               "model": {"hidden_units": [16], "latent_dim": 4},
                               "training": {"epochs": 2, "calibration_fraction": 0.3},
                               "calibration": {"method": "quantile"}})  # fmt: skip
    train_bundle(config, [root / "train"], root / "bundle", name="hum", progress=False)
    return root / "bundle"


def _mkdir(root: Path) -> Path:
    (root / "train").mkdir()
    return root / "train"


def test_replaying_44khz_audio_through_a_16khz_bundle_stops_with_one_line(
    audio_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "loud.wav"
    soundfile.write(wav, np.zeros(44100, dtype=np.float32), 44100)
    config = tmp_path / "audio.toml"
    config.write_text('[features]\nkind = "logmel"\n[features.logmel]\nscore_window_s = 0.25\nscore_hop_s = 0.125\n'
                      '[metrics]\nenabled = false\n')  # fmt: skip
    assert main(["replay", "--config", str(config), "--bundle", str(audio_bundle), "--input", str(wav)]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert f"{wav} is sampled at 44100 Hz; the bundle's features expect 16000 Hz" in out.err
    assert out.out == ""


def test_evaluating_two_folders_keeps_their_same_named_files_apart(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path
) -> None:
    for valve in ("valve1", "valve2"):
        (tmp_path / valve).mkdir()
        shutil.copy(sensor_data[1] / ("pump-2.csv" if valve == "valve1" else "pump-3.csv"), tmp_path / valve / "0.csv")
    report = tmp_path / "report"
    assert main(["-q", "evaluate", "--bundle", str(sensor_bundle), "--data", str(tmp_path / "valve1"),
                 str(tmp_path / "valve2"), "--report", str(report)]) == 0  # fmt: skip
    assert set(json.loads((report / "report.json").read_text())["files"]) == {"valve1/0", "valve2/0"}
    assert {p.relative_to(report / "timelines").as_posix() for p in (report / "timelines").rglob("*.png")} == {
        "valve1/0.png", "valve2/0.png"}  # fmt: skip


def test_errors_under_log_json_are_json_lines(
    sensor_config: Path, header_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--log-json", "train", "--config", str(sensor_config), "--data", str(header_only), "--out",
            str(tmp_path / "b")]  # fmt: skip
    assert main(args) == 2
    entry = json.loads(_one_line_error(capsys))
    assert entry["level"] == "error"
    assert f"{header_only}: no data" in entry["message"]


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ae-monitor {__version__}"


def test_option_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 9108)" in text
    assert "(default: 60.0)" in text
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "random seed (default: 0)" in " ".join(capsys.readouterr().out.split())


def test_score_names_each_windows_rows_and_takes_rows_like_the_other_commands(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pump = str(sensor_data[1] / "pump-1.csv")
    assert main(["-q", "score", "--bundle", str(sensor_bundle), pump, "--rows", "100:200"]) == 0
    windows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(windows) == 100 - 30 + 1
    assert (windows[0]["start_row"], windows[0]["end_row"]) == (100, 130)
    assert windows[-1]["end_row"] == 200


def test_train_says_whether_it_stopped_early(
    sensor_config: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--config", str(sensor_config), "--data", str(sensor_data[0]), "--out", str(tmp_path / "b"),
            "--rows", "0:600"]  # fmt: skip
    assert main(args) == 0
    assert "ran all 2 epochs" in capsys.readouterr().err  # the CLI's log handler writes to stderr


def test_evaluate_takes_out_and_replay_takes_data_like_the_other_commands(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path
) -> None:
    pump = str(sensor_data[1] / "pump-1.csv")
    assert main(["-q", "evaluate", "--bundle", str(sensor_bundle), "--data", pump, "--out", str(tmp_path / "r"),
                 "--no-plots"]) == 0  # fmt: skip
    assert (tmp_path / "r" / "report.json").is_file()
    config = _replay_config(tmp_path, 0)
    assert main(["-q", "replay", "--config", str(config), "--bundle", str(sensor_bundle), "--data", pump]) == 0


@pytest.mark.parametrize(("kind", "topic"), [("sensor", "sensors"), ("audio", "audio")])
def test_config_example_prints_a_commented_config_that_loads(
    kind: str, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "example", kind]) == 0
    text = capsys.readouterr().out
    settings = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    assert all("#" in line for line in settings)  # every key it sets says what it is for
    path = tmp_path / f"{kind}.toml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 0
    resolved = capsys.readouterr().out
    assert f'topics = ["{topic}"]' in resolved
    assert f'kind = "{"logmel" if kind == "audio" else "sensor"}"' in resolved


def test_replay_refuses_files_of_two_folders_that_would_share_a_stream_name(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for valve in ("valve1", "valve2"):
        (tmp_path / valve).mkdir()
        shutil.copy(sensor_data[1] / "pump-1.csv", tmp_path / valve / "0.csv")
    args = ["replay", "--config", str(_replay_config(tmp_path, 0)), "--bundle", str(sensor_bundle), "--input",
            str(tmp_path / "valve1"), str(tmp_path / "valve2")]  # fmt: skip
    assert main(args) == 2
    assert "would both be stream '0'" in _one_line_error(capsys)
    assert main(["-q", *args[:-2], str(tmp_path)]) == 0  # their common folder: streams valve1/0 and valve2/0


def _hum(path: Path, seconds: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(0).normal(0, 0.01, len(t))
    soundfile.write(path / "normal_id_00_0.wav", 0.3 * np.sin(2 * np.pi * 120 * t) + noise, 16000)
    return path


def test_a_too_short_audio_training_set_stops_before_training_naming_how_much_audio_is_needed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "audio.toml"
    config.write_text('[features]\nkind = "logmel"\n[training]\nepochs = 1\n[calibration]\nmethod = "quantile"\n'
                      "[model]\nhidden_units = [16]\nlatent_dim = 4\n")  # fmt: skip
    short = ["train", "--config", str(config), "--data", str(_hum(tmp_path / "short", 3.0)), "--out",
             str(tmp_path / "b")]  # fmt: skip
    assert main(short) == 2
    out = capsys.readouterr()
    assert "epoch" not in out.err  # nothing was trained
    err = out.err.strip()
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert "calibration part gives 1 window(s) before training, 2 needed" in err
    assert "supply at least 11.2 s of audio per file (the longest has 3.0 s)" in err
    enough = ["train", "--config", str(config), "--data", str(_hum(tmp_path / "enough", 11.2)), "--out",
              str(tmp_path / "b")]  # fmt: skip
    assert main(enough) == 0  # the length it names is enough


def test_training_data_too_short_for_peaks_over_threshold_stops_before_training_naming_the_scores_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # POT needs 10 peaks above its initial quantile: 182 window scores at 0.95 (the other methods need 2).
    config = tmp_path / "audio.toml"
    config.write_text('[features]\nkind = "logmel"\n[training]\nepochs = 1\n[calibration]\nmethod = "pot"\n'
                      "pot_initial_quantile = 0.95\n[model]\nhidden_units = [16]\nlatent_dim = 4\n")  # fmt: skip
    short = ["train", "--config", str(config), "--data", str(_hum(tmp_path / "short", 12.0)), "--out",
             str(tmp_path / "b")]  # fmt: skip
    assert main(short) == 2
    out = capsys.readouterr()
    assert "epoch" not in out.err  # stopped before training, not after it at calibration
    err = out.err.strip()
    assert "window(s) before training, 182 needed" in err, err
    assert "lower calibration.pot_initial_quantile" in err
    needed = float(err.split("supply at least ")[1].split(" s ")[0])
    enough = ["train", "--config", str(config), "--data", str(_hum(tmp_path / "enough", needed)), "--out",
              str(tmp_path / "b")]  # fmt: skip
    assert main(enough) == 0  # the length it names is enough for the calibration too


@pytest.mark.parametrize(
    "features",
    [{"kind": "logmel"}, {"kind": "logmel", "logmel": {"pad_mode": "reflect", "hop_length": 256, "frames": 3}},
     {"kind": "sensor", "sensor": {"window_samples": 7, "hop_samples": 3, "differences": True}}],
)  # fmt: skip
def test_the_split_check_counts_the_vectors_the_features_make(features: dict[str, object]) -> None:
    config = config_from_dict({"features": features})
    channels = () if features["kind"] == "logmel" else ("a",)
    rng = np.random.default_rng(0)
    for n in (0, 1, 6, 7, 8, 9, 10, 11, 255, 511, 512, 1023, 1024, 2047, 2048, 2049, 2559, 2560, 5000):
        shape = (n,) if features["kind"] == "logmel" else (n, 1)
        samples = rng.normal(size=(max(n, 20), *shape[1:]))
        extractor = fit_extractor(config.features, [Signal("x", samples, np.arange(len(samples)) * 1.0, channels)])
        assert _vectors_in(config, n) == len(extractor.transform(samples[:n]).data), n


def test_sigint_while_serve_waits_for_an_unreachable_broker_stops_it_at_once_with_one_line(
    sensor_bundle: Path, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    config = tmp_path / "serve.toml"
    config.write_text(f'[kafka]\nbootstrap_servers = ["127.0.0.1:{closed}"]\n[source]\ntopics = ["sensors"]\n'
                      f'[[routes]]\nbundle_path = "{sensor_bundle}"\n[service]\nhttp_port = 0\n'
                      'log_format = "text"\n')  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(config)],
                                stderr=err, stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "Attempting bootstrap" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            asked = time.monotonic()
            assert proc.wait(timeout=30) == 0  # as a SIGINT of a running serve
            assert time.monotonic() - asked < 5  # not after kafka.connect_timeout_s (30 s)
        finally:
            proc.kill()
    text = log.read_text()
    assert "Exception ignored" not in text
    assert "Traceback" not in text
    ours = [line for line in text.splitlines() if " ae_monitor" in line]
    assert ours[-1].endswith("WARNING ae_monitor: stopped by SIGINT while starting; nothing was consumed")


def test_the_benchmarks_default_config_is_found_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository root
    assert main(["benchmark", "skab", "--data", str(tmp_path / "skab"), "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "no SKAB files under" in err  # the config loaded; the (absent) data is what stops it


def test_encode_takes_rows_like_the_other_commands(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from ae_monitor.jobs.codec import read_codes

    pump = str(sensor_data[1] / "pump-1.csv")
    args = ["-q", "encode", "--bundle", str(sensor_bundle), pump, "--out", str(tmp_path / "c.safetensors")]
    assert main([*args, "--rows", "100:200"]) == 0
    codes = read_codes(tmp_path / "c.safetensors")
    assert codes.stream_samples == [100]
    assert len(codes.first_sample) == 100 - 30 + 1  # one code per window of the 100 rows
