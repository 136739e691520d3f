"""The `ae-monitor` command end to end on temporary data: train -> calibrate -> score -> evaluate -> replay."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ae_monitor.cli import main
from ae_monitor.jobs.demo import DEMO_CONFIG
from ae_monitor.model.bundle import check_bundle, load_bundle
from ae_monitor.model.integrity import KEY_ENV


def _write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    lines = []
    for section, keys in sections.items():
        flat = {k: v for k, v in keys.items() if not isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in flat.items()]
        for sub, sub_keys in keys.items():
            if isinstance(sub_keys, dict):
                lines.append(f"[{section}.{sub}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in sub_keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def sensor_config(tmp_path: Path) -> Path:
    return _write_config(tmp_path / "sensor.toml", {**DEMO_CONFIG, "metrics": {"enabled": False}})


def test_config_check_prints_the_resolved_config(sensor_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(sensor_config)]) == 0
    assert "window_samples = 30" in capsys.readouterr().out


def test_config_check_lists_every_error_with_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nepochs = -1\nepoks = 3\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "training.epochs" in err
    assert "training.epoks: unknown key" in err


def test_sensor_train_calibrate_score_evaluate_replay(
    sensor_config: Path, sensor_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_dir, replay_dir = sensor_data
    bundle = tmp_path / "bundle"
    assert main(["-q", "train", "--config", str(sensor_config), "--data", str(train_dir), "--out", str(bundle),
                 "--rows", "0:2500"]) == 0  # fmt: skip
    first = load_bundle(bundle).calibration
    assert first is not None

    assert main(["-q", "calibrate", "--bundle", str(bundle), "--data", str(train_dir), "--method", "quantile"]) == 0
    recalibrated = load_bundle(bundle).calibration
    assert recalibrated is not None
    assert recalibrated.method == "quantile"
    assert recalibrated.n_samples > first.n_samples

    scores = tmp_path / "scores.csv"
    assert main(["-q", "score", "--bundle", str(bundle), str(replay_dir / "pump-2.csv"), "--format", "csv",
                 "--out", str(scores)]) == 0  # fmt: skip
    with scores.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1000 - 30 + 1
    assert {"stream", "start_s", "end_s", "score", "threshold", "anomaly", "vibration_rms"} <= set(rows[0])

    report = tmp_path / "report"
    assert main(["-q", "evaluate", "--bundle", str(bundle), "--data", str(replay_dir), "--report", str(report)]) == 0
    summary = json.loads((report / "report.json").read_text())
    assert summary["overall"]["auc"] > 0.9
    assert (report / "roc.png").stat().st_size > 0
    assert (report / "timelines" / "pump-2.png").stat().st_size > 0
    with (report / "predictions.csv").open() as handle:
        assert sum(1 for _ in handle) == 3 * 1000 + 1

    capsys.readouterr()
    assert main(["-q", "replay", "--config", str(sensor_config), "--bundle", str(bundle),
                 "--input", str(replay_dir)]) == 0  # fmt: skip
    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {a["stream"] for a in alerts if a["status"] == "firing"} >= {"pump-2", "pump-3"}


def test_audio_train_score_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 4) / 16000
    hum = 0.3 * np.sin(2 * np.pi * 120 * t) + 0.1 * np.sin(2 * np.pi * 240 * t)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for i in range(2):
        soundfile.write(tmp_path / "train" / f"normal_id_00_{i}.wav", hum + rng.normal(0, 0.01, t.size), 16000)
    soundfile.write(tmp_path / "test" / "normal_id_00_9.wav", hum + rng.normal(0, 0.01, t.size), 16000)
    rattle = hum + 0.3 * np.sin(2 * np.pi * 3100 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    soundfile.write(tmp_path / "test" / "anomaly_id_00_9.wav", rattle + rng.normal(0, 0.01, t.size), 16000)
    config = _write_config(tmp_path / "audio.toml", {
        "features": {"kind": "logmel", "logmel": {"score_window_s": 0.25, "score_hop_s": 0.125}},
        "model": {"hidden_units": [64, 64], "latent_dim": 8},
        "training": {"epochs": 100, "batch_size": 32, "learning_rate": 0.003, "calibration_fraction": 0.2},
        "calibration": {"method": "quantile", "quantile": 0.95},
    })  # fmt: skip
    bundle = tmp_path / "bundle"
    assert main(["-q", "train", "--config", str(config), "--data", str(tmp_path / "train"), "--out", str(bundle)]) == 0
    assert main(["-q", "score", "--bundle", str(bundle), str(tmp_path / "test")]) == 0
    windows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(windows[0]["contributions"]) == 128
    assert main(["-q", "evaluate", "--bundle", str(bundle), "--data", str(tmp_path / "test"),
                 "--report", str(tmp_path / "r")]) == 0  # fmt: skip
    files = json.loads((tmp_path / "r" / "report.json").read_text())["files"]
    assert files["anomaly_id_00_9"]["score"] > files["normal_id_00_9"]["score"]


def test_a_bad_bundle_stops_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--bundle", str(tmp_path), str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_replay_without_a_bundle_names_the_key(sensor_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--config", str(sensor_config), "--input", "x.csv"]) == 2
    assert "replay.bundle_path" in capsys.readouterr().err


def test_replay_reads_json_lines_from_stdin(
    sensor_config: Path, sensor_bundle: Path, sensor_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import io

    from ae_monitor.config import load_config
    from ae_monitor.sources.files import read_sensor_csv

    table = read_sensor_csv(sensor_data[1] / "pump-2.csv", load_config(sensor_config, environ={}).features.sensor)
    lines = [
        json.dumps(
            {"stream": "pump-2", "ts": float(ts), "values": dict(zip(table.channels, map(float, row), strict=True))}
        )
        for ts, row in zip(table.ts_s, table.values, strict=True)
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([*lines[:500], "oops", *lines[500:]]) + "\n"))
    assert main(["-q", "replay", "--config", str(sensor_config), "--bundle", str(sensor_bundle), "--input", "-"]) == 0
    captured = capsys.readouterr()
    alerts = [json.loads(line) for line in captured.out.splitlines()]
    assert {a["stream"] for a in alerts if a["status"] == "firing"} == {"pump-2"}
    assert '"reason":"invalid_json"' in captured.err


def test_config_check_redacts_every_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "secrets.toml"
    config.write_text(
        '[kafka]\nsecurity_protocol = "SASL_SSL"\n'
        '[kafka.extra]\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_plain_username = "svc-monitor"\n'
        'sasl_plain_password = "pw-in-the-file"\n'
        '[sinks.webhook]\nurl = "https://bot:pw-in-the-url@hooks.example/alerts?token=tok-in-the-query&team=ops"\n'
        '[sinks.webhook.headers]\nAuthorization = "Bearer tok-in-a-header"\nX-Team = "ops"\n'
    )
    monkeypatch.setenv("AE_MONITOR_KAFKA__EXTRA__SSL_PASSWORD", "pw-from-the-environment")
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    for secret in ("pw-in-the-file", "svc-monitor", "pw-in-the-url", "tok-in-the-query", "tok-in-a-header",
                   "pw-from-the-environment"):  # fmt: skip
        assert secret not in out
    assert 'sasl_plain_password = "<redacted>"' in out
    assert 'ssl_password = "<redacted>"' in out
    assert 'Authorization = "<redacted>"' in out
    assert 'url = "https://<redacted>@hooks.example/alerts?token=<redacted>&team=ops"' in out
    assert 'sasl_mechanism = "SCRAM-SHA-512"' in out
    assert 'X-Team = "ops"' in out


def test_bundle_verify_says_ok_and_a_modified_bundle_stops_with_one_line(
    sensor_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    bundle = Path(shutil.copytree(sensor_bundle, tmp_path / "pump"))
    assert main(["-q", "bundle", "verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{bundle}: ok, pump version")
    assert out.rstrip().endswith(", not signed")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"]["threshold"] *= 100
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main(["-q", "bundle", "verify", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ae-monitor: error: calibration: modified in manifest.json")
    assert err.count("\n") == 1


def test_with_the_key_set_bundles_are_signed_and_calibrate_keeps_them_signed(
    sensor_bundle: Path, sensor_data: tuple[Path, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    key = "a-site-key-0123456789abcdef"
    bundle = Path(shutil.copytree(sensor_bundle, tmp_path / "pump"))
    monkeypatch.setenv(KEY_ENV, key)
    assert main(["-q", "bundle", "verify", str(bundle)]) == 2  # written without the key: refused
    assert "integrity.signature: the bundle is not signed" in capsys.readouterr().err
    assert main(["-q", "bundle", "sign", str(bundle)]) == 0
    assert "signature verified (key id" in capsys.readouterr().out
    assert main(["-q", "calibrate", "--bundle", str(bundle), "--data", str(sensor_data[0]), "--rows", "0:1000",
                 "--method", "quantile"]) == 0  # fmt: skip
    assert check_bundle(bundle, environ={KEY_ENV: key}).state == "signed"
    assert load_bundle(bundle, environ={KEY_ENV: key}).calibration is not None
