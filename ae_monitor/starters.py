"""Commented starting configs that ship inside the package: `ae-monitor config example sensor|audio` prints them.

Short on purpose: the keys a first deployment sets, each commented. Every other key keeps its default; the
reference recipes in the repository (configs/sensor-skab.toml, configs/audio-dcase.toml) comment every key.
"""

from __future__ import annotations

import contextlib
from importlib import metadata
from pathlib import Path

from ae_monitor.errors import ConfigError

_COMMON = """
[calibration]
method = "quantile"           # "quantile", "gamma", "pot" (peaks over threshold) or "false_alarm_rate"
quantile = 0.999              # the threshold is this quantile of held-out normal window scores
margin = 1.0                  # threshold = the method's value x margin (> 1 for fewer false alarms)

[alerting]
k = 3                         # fire when k of the last n windows are above the threshold
n = 5                         # ... of the last n windows
exit_ratio = 0.9              # resolve when a window drops below exit_ratio x threshold (hysteresis)
cooldown_s = 60.0             # after a resolution, wait this long before firing again

[replay]
# bundle_path = "bundles/my-machine"  # the bundle `ae-monitor replay` uses when --bundle is not given
alerts_path = "-"             # JSON lines of alerts: "-" = stdout, or a file path

[metrics]
port = 9108                   # replay's /metrics /healthz /readyz (0 = any free port; enabled = false: none)

# ---- ae-monitor serve: the daemon ----

[kafka]
bootstrap_servers = ["127.0.0.1:9092"]  # brokers to bootstrap from

[source]
topics = ["{topic}"]          # topics to consume (docs/records.md: the record formats)
group_id = "ae-monitor"       # processes with the same group split the partitions

[[routes]]
match = "*"                   # a glob on the stream id: the first matching route picks the bundle
bundle_path = "bundles/my-machine"  # the bundle directory (`ae-monitor train --out`); SIGHUP reloads it

[sinks.kafka]
alerts_topic = "ae-monitor-alerts"  # alert events as JSON (docs/alerts.md), key = stream
dead_letter_topic = "ae-monitor-dead-letters"  # unusable records with the reason

[sinks.alertmanager]
# url = "http://127.0.0.1:9093"  # also send alerts to this Alertmanager

[service]
http_port = 9108              # serve's /metrics /healthz /readyz
"""

SENSOR = """# ae_monitor starting config: multivariate sensors (CSV files offline, JSON records from Kafka).
# Every key not set here keeps its default; unknown keys are rejected. `ae-monitor config check FILE` shows the
# resolved config. Environment overrides: AE_MONITOR_<SECTION>__<KEY>, e.g. AE_MONITOR_TRAINING__EPOCHS=5.

[features]
kind = "sensor"               # multivariate windows ("logmel" for audio)

[features.sensor]
channels = []                 # the channel columns, in order; [] = every numeric column
time_column = "datetime"      # ISO datetimes or epoch seconds; without it rows are sample_period_s apart
sample_period_s = 1.0         # nominal seconds between samples
window_samples = 30           # samples per window: long enough to hold one normal cycle of the machine
hop_samples = 1               # samples between window starts

[model]
kind = "dense"                # "dense", "conv1d", "lstm" or "vae"
hidden_units = [64, 32]       # encoder layers (mirrored in the decoder)
latent_dim = 6                # bottleneck size: well below channels x window_samples

[training]
epochs = 50                   # at most; early stopping ends sooner
validation_fraction = 0.1     # held out for early stopping
calibration_fraction = 0.15   # held out to calibrate the threshold
""" + _COMMON.replace("{topic}", "sensors")

AUDIO = """# ae_monitor starting config: machine sound (WAV/FLAC files offline, audio chunks from Kafka).
# Every key not set here keeps its default; unknown keys are rejected. `ae-monitor config check FILE` shows the
# resolved config. Environment overrides: AE_MONITOR_<SECTION>__<KEY>, e.g. AE_MONITOR_TRAINING__EPOCHS=5.

[features]
kind = "logmel"               # log-mel spectrogram vectors ("sensor" for multivariate windows)

[features.logmel]
sample_rate_hz = 16000        # the audio's rate; other rates are refused unless resample = true
resample = false              # true: resample other rates instead of refusing them
n_mels = 128                  # mel bands per frame
frames = 5                    # consecutive frames stacked into one vector
score_window_s = 1.0          # an alert window averages the vectors of this many seconds
score_hop_s = 0.5             # a new window every this many seconds

[model]
kind = "dense"                # the DCASE baseline autoencoder
hidden_units = [128, 128, 128, 128]  # encoder layers (mirrored in the decoder)
latent_dim = 8                # bottleneck size

[training]
epochs = 100                  # at most; early stopping ends sooner
batch_size = 512              # vectors per step
validation_fraction = 0.1     # held out for early stopping
calibration_fraction = 0.1    # held out to calibrate the threshold
""" + _COMMON.replace("{topic}", "audio")

EXAMPLES = {"sensor": SENSOR, "audio": AUDIO}


def shipped_config(name: str) -> Path:
    """The path of a reference config of the repository's configs/ (e.g. "sensor-skab.toml") wherever ae_monitor
    runs: installed from the wheel, it is under <prefix>/share/ae-monitor/configs (pyproject's data-files, found
    through the install record); from a checkout or an editable install, in the checkout's configs/."""
    with contextlib.suppress(metadata.PackageNotFoundError):
        for file in metadata.distribution("ae-monitor").files or ():
            if file.parts[-3:] == ("ae-monitor", "configs", name):
                located = Path(str(file.locate()))
                if located.is_file():
                    return located.resolve()
    checkout = Path(__file__).resolve().parents[1] / "configs" / name
    if checkout.is_file():
        return checkout
    raise ConfigError(f"the reference config {name} is neither installed nor in a checkout; pass --config")
