"""Configuration: typed, validated, unknown keys rejected with their path, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ae_monitor.config import REDACTED, Config, config_from_dict, dump_config, is_secret_key, load_config, redact
from ae_monitor.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["audio-dcase.toml", "sensor-skab.toml"])
def test_shipped_configs_load(name: str) -> None:
    assert isinstance(load_config(CONFIGS / name, environ={}), Config)


@pytest.mark.parametrize("name", ["audio-dcase.toml", "sensor-skab.toml"])
def test_every_key_of_the_shipped_configs_is_commented(name: str) -> None:
    for line in (CONFIGS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key in {name}: {line}"


def test_dcase_config_is_the_baseline_recipe() -> None:
    logmel = load_config(CONFIGS / "audio-dcase.toml", environ={}).features.logmel
    assert (logmel.sample_rate_hz, logmel.n_fft, logmel.hop_length, logmel.n_mels, logmel.frames) == (
        16000,
        1024,
        512,
        128,
        5,
    )


def test_unknown_key_is_rejected_naming_its_path() -> None:
    with pytest.raises(ConfigError, match=r"features\.sensor\.window_size: unknown key"):
        config_from_dict({"features": {"sensor": {"window_size": 10}}})


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"training": {"epochs": 0}, "alerting": {"typo": 1}})
    assert "training.epochs" in str(info.value)
    assert "alerting.typo" in str(info.value)


def test_hop_longer_than_window_is_rejected() -> None:
    with pytest.raises(ConfigError, match="hop_samples must not exceed window_samples"):
        config_from_dict({"features": {"sensor": {"window_samples": 10, "hop_samples": 11}}})


def test_k_greater_than_n_is_rejected() -> None:
    with pytest.raises(ConfigError, match="alerting"):
        config_from_dict({"alerting": {"k": 4, "n": 3}})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[training]\nepochs = 50\n")
    env = {
        "AE_MONITOR_TRAINING__EPOCHS": "7",
        "AE_MONITOR_FEATURES__SENSOR__WINDOW_SAMPLES": "30",
        "AE_MONITOR_REPLAY__ALERTS_PATH": "alerts.jsonl",
        "UNRELATED": "x",
    }
    config = load_config(path, environ=env)
    assert config.training.epochs == 7
    assert config.features.sensor.window_samples == 30
    assert config.replay.alerts_path == "alerts.jsonl"


def test_bad_environment_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        load_config(None, environ={"AE_MONITOR_TRAINING__EPOCHS": "many"})


def test_missing_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_dumped_config_loads_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "sensor-skab.toml", environ={})
    path = tmp_path / "resolved.toml"
    path.write_text(dump_config(config))
    assert load_config(path, environ={}) == config


def test_a_route_may_match_on_a_record_field_but_not_on_the_samples() -> None:
    config = config_from_dict({"routes": [{"match": "pump*", "field": "machine_type", "bundle_path": "b"}]})
    assert config.routes[0].field == "machine_type"
    with pytest.raises(ConfigError, match=r"routes\.0\.field"):
        config_from_dict({"routes": [{"field": "ts", "bundle_path": "b"}]})
    with pytest.raises(ConfigError, match=r"routes\.0\.field"):
        config_from_dict({"routes": [{"field": "machine type", "bundle_path": "b"}]})


@pytest.mark.parametrize(
    "key",
    ["sasl_plain_password", "sasl_plain_username", "sasl_oauth_token", "ssl_password", "password", "api_key",
     "client_secret", "Authorization", "X-Api-Key", "X-Auth-Token", "Cookie"],
)  # fmt: skip
def test_secret_like_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["sasl_mechanism", "ssl_keyfile", "ssl_cafile", "security_protocol", "bootstrap_servers", "X-Team", "k"]
)
def test_settings_that_only_resemble_secrets_stay_visible(key: str) -> None:
    assert not is_secret_key(key)


def test_a_dumped_config_shows_no_secret_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[kafka.extra]\nsasl_plain_password = "from-file"\n[sinks.alertmanager.headers]\n'
                    'Authorization = "Basic from-header"\n')  # fmt: skip
    config = load_config(path, environ={"AE_MONITOR_KAFKA__EXTRA__SSL_PASSWORD": "from-env"})
    text = dump_config(config)
    assert "from-" not in text
    assert text.count(REDACTED) == 3
    assert config.kafka.extra["sasl_plain_password"] == "from-file"  # redaction is for output only


def test_redaction_reaches_into_lists_and_urls_and_keeps_unset_values() -> None:
    dumped = {"servers": ["SASL_SSL://u:p@b1:9093"], "token": None, "nested": [{"secret": 1}]}
    assert redact(dumped) == {"servers": ["SASL_SSL://<redacted>@b1:9093"], "token": None,
                              "nested": [{"secret": REDACTED}]}  # fmt: skip
