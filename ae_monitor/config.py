"""Typed configuration for every stage, read from one TOML file.

Every section is a frozen pydantic model with unknown keys forbidden, so a typo stops startup with the key's path.
Environment variables `AE_MONITOR_<SECTION>__<KEY>` (nested keys joined by `__`) override the file; their values
are parsed as TOML values when they can be (`5`, `0.1`, `true`, `[1, 2]`) and taken as strings otherwise.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ae_monitor.errors import ConfigError

ENV_PREFIX = "AE_MONITOR_"
REDACTED = "<redacted>"
# A key is secret when one of its words (split at anything but letters and digits) is one of these, or it is a SASL
# setting other than the mechanism: kafka `extra` passes sasl_plain_password and ssl_password through, HTTP sink
# `headers` carry Authorization or X-Api-Key.
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "passphrase", "secret", "token", "key", "apikey", "credential", "credentials",
     "authorization", "auth", "cookie", "signature"}
)  # fmt: skip
_NOT_SECRET = frozenset({"sasl_mechanism"})
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_URL_SECRET_PARAM = re.compile(r"(?<=[?&])([^=&#\s]+)=([^&#\s]*)")


# A bundle given as `registry://<root>/<model>@<alias>` (docs/operations.md "Model lifecycle"): the version the alias
# names in the registry at <root>, a folder or an MLflow URL (ae_monitor/registry/). Names are one path component.
REGISTRY_SCHEME = "registry://"
REGISTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def parse_registry_ref(text: str) -> tuple[str, str, str] | None:
    """(root, model, alias) of a `registry://<root>/<model>@<alias>` bundle reference; None for a plain path.
    Raises ValueError, saying what is wrong, for a malformed reference.

    >>> parse_registry_ref("registry:///srv/models/pump@production")
    ('/srv/models', 'pump', 'production')
    >>> parse_registry_ref("bundles/pump") is None
    True
    """
    if not text.startswith(REGISTRY_SCHEME):
        return None
    rest = text[len(REGISTRY_SCHEME) :]
    where, at, alias = rest.rpartition("@")
    root, slash, model = where.rpartition("/")
    if not (at and slash and root):
        raise ValueError(
            f"{text!r} is not registry://<root>/<model>@<alias> (e.g. registry:///srv/models/pump@production)"
        )
    for kind, name in (("model", model), ("alias", alias)):
        if not REGISTRY_NAME.match(name):
            raise ValueError(f"{kind} name {name!r} in {text!r} must be letters, digits, '_', '.', '-' (100 at most)")
    return root, model, alias


def _bundle_reference(value: str | None) -> str | None:
    if value is not None:
        parse_registry_ref(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogMelConfig(_Section):
    """Log-mel features; the defaults are the DCASE Task 2 baseline recipe."""

    sample_rate_hz: int = Field(16000, gt=0)
    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(128, gt=0)
    power: float = Field(2.0, gt=0)
    frames: int = Field(5, gt=0)
    fmin_hz: float = Field(0.0, ge=0)
    fmax_hz: float | None = Field(None, gt=0)
    pad_mode: Literal["constant", "reflect"] = "constant"
    channel: Literal["mean"] | int = "mean"
    resample: bool = False
    score_window_s: float = Field(1.0, gt=0)
    score_hop_s: float = Field(0.5, gt=0)
    # "standard": each mel band's dB is standardised by its mean and standard deviation over the training audio
    # (fitted by `train`, stored in the bundle); "none" keeps dB as DCASE does (and as bundles without it load).
    band_scaling: Literal["none", "standard"] = "none"

    @model_validator(mode="after")
    def _check(self) -> LogMelConfig:
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must not exceed n_fft")
        if self.fmax_hz is not None and self.fmax_hz > self.sample_rate_hz / 2:
            raise ValueError("fmax_hz must not exceed half the sample rate")
        if self.score_hop_s > self.score_window_s:
            raise ValueError("score_hop_s must not exceed score_window_s")
        if isinstance(self.channel, int) and self.channel < 0:
            raise ValueError("channel must be 'mean' or a channel index >= 0")
        return self


class SensorConfig(_Section):
    """Multivariate sensor windows."""

    channels: tuple[str, ...] = ()
    time_column: str = "datetime"
    label_columns: tuple[str, ...] = ("anomaly", "changepoint")
    csv_separator: str | None = None
    window_samples: int = Field(60, gt=0)
    hop_samples: int = Field(1, gt=0)
    differences: bool = False
    scaling: Literal["standard", "minmax"] = "standard"
    nan_policy: Literal["reject", "fill_previous", "fill_mean"] = "fill_previous"
    sample_period_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> SensorConfig:
        if self.hop_samples > self.window_samples:
            raise ValueError("hop_samples must not exceed window_samples")
        return self


class FeaturesConfig(_Section):
    kind: Literal["logmel", "sensor"] = "logmel"
    logmel: LogMelConfig = LogMelConfig()
    sensor: SensorConfig = SensorConfig()


class ModelConfig(_Section):
    """The autoencoder network. Each kind is a pure torch.nn.Module built from these fields."""

    kind: Literal["dense", "conv1d", "lstm", "vae", "interp"] = "dense"
    hidden_units: tuple[int, ...] = (128, 128, 128, 128)
    latent_dim: int = Field(8, gt=0)
    batch_norm: bool = True
    conv_channels: tuple[int, ...] = (32, 16)
    kernel_size: int = Field(7, gt=0)
    lstm_hidden_size: int = Field(64, gt=0)
    lstm_layers: int = Field(1, gt=0)
    sparsity: Literal["none", "l1", "kl"] = "none"
    sparsity_weight: float = Field(1e-3, ge=0)
    sparsity_target: float = Field(0.05, gt=0, lt=1)
    vae_beta: float = Field(1.0, ge=0)
    vae_score: Literal["reconstruction", "elbo"] = "reconstruction"


class TrainingConfig(_Section):
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(512, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["mse", "bce"] = "mse"
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    calibration_fraction: float = Field(0.1, ge=0, lt=1)
    early_stopping_patience: int = Field(10, ge=0)
    # The least optimizer steps a training takes: epochs are added up to it and early stopping waits for it, since
    # with a few hundred vectors an epoch is a handful of steps (0 = epochs alone decide).
    min_steps: int = Field(0, ge=0)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    torch_threads: int = Field(1, gt=0)
    denoising: Literal["none", "gaussian", "masking"] = "none"
    noise_level: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.validation_fraction + self.calibration_fraction >= 0.9:
            raise ValueError("validation_fraction + calibration_fraction must leave at least 10% for training")
        return self


class CalibrationConfig(_Section):
    method: Literal["quantile", "gamma", "pot", "false_alarm_rate", "target"] = "gamma"
    # method "target": the threshold a normal window exceeds this often, estimated from normal window scores
    # (empirical where the sample holds enough exceedances, a generalised Pareto tail beyond; see docs/calibration.md).
    target_false_alerts_per_1000_windows: float = Field(1.0, gt=0, lt=500)
    # k >= 2: k-fold cross-fitted training; calibration sees out-of-fold scores over ALL normal data (k extra models).
    # 0: calibrate on the held-out tail (training.calibration_fraction), as before.
    folds: int = Field(0, ge=0, le=10)
    # How a vector's score is formed from its per-channel (per-mel-band) errors. "mean": the mean squared error over
    # every value (DCASE). "max": each group's mean squared error divided by its calibration scale (the
    # `group_scale_quantile` of that group's normal errors), then the largest: one channel's spike is not averaged away.
    aggregation: Literal["mean", "max"] = "mean"
    group_scale_quantile: float = Field(0.99, gt=0, lt=1)
    # How an audio window's score is formed from its vectors. "none": the mean of their scores (DCASE). "band_mean_z":
    # that mean and the window's band statistic (each mel band's mean over the window, as a z-score against the
    # normal windows; unitless), each over its `window_statistic_quantile` on the calibration windows (the statistic's
    # times `window_statistic_margin`), the larger of the two: a missing event shows in the bands' levels over a
    # window, not in any one vector (docs/audio.md).
    window_statistic: Literal["none", "band_mean_z"] = "none"
    window_statistic_quantile: float = Field(0.99, gt=0, lt=1)
    window_statistic_margin: float = Field(2.0, gt=0)
    quantile: float = Field(0.99, gt=0, lt=1)
    gamma_percentile: float = Field(0.9, gt=0, lt=1)
    pot_risk: float = Field(1e-3, gt=0, lt=1)
    pot_initial_quantile: float = Field(0.98, gt=0, lt=1)
    false_alarms_per_hour: float = Field(1.0, gt=0)
    # Calibrating on the training windows themselves (in-sample) underestimates how new normal data scores: the
    # threshold is the method's value times `margin` (SKAB's published Conv-AE used 4/3). 1.0 = no margin.
    margin: float = Field(1.0, gt=0)
    # Which normal windows calibrate (without folds): "held_out" = the held-out tail (training.calibration_fraction),
    # "all" = every normal window, training windows included, scored by the final network: the whole normal range
    # (cycles, operating points) at the cost of in-sample scores that run a little low (see `margin`).
    calibrate_on: Literal["held_out", "all"] = "held_out"
    # Score a window by the errors of its last `recent_steps` time steps only (0 = all of them): an alert starts and
    # ends with the newest samples instead of lagging a whole window, and a short spike is not averaged away.
    recent_steps: int = Field(0, ge=0)
    # Sensors, aggregation "max": a linear monitor (PCA on the normal feature rows, this many components; 0 = none)
    # whose Hotelling T² and residual Q over the scored steps join the channels as further terms, each divided by its
    # own `group_scale_quantile` on normal data (model/linear.py): it sees an offset on one of many tightly
    # correlated channels, or a broken correlation, that the autoencoder reconstructs too loosely to notice.
    linear_components: int = Field(0, ge=0, le=64)
    linear_terms: tuple[Literal["t2", "q"], ...] = ("t2",)
    # Live thresholds: "dspot" gives each stream its own StreamingPot (pot_risk, pot_initial_quantile), started from
    # the calibration scores, moving with that stream's normal scores; "track" raises each stream's threshold by the
    # ratio of its recent normal scores' median to the calibration median (never lowers it; see docs/calibration.md);
    # "none" keeps the bundle's fixed threshold.
    online: Literal["none", "dspot", "track"] = "none"
    dspot_depth: int = Field(0, ge=0)  # normal scores in DSPOT's moving level; 0 = plain SPOT (no drift term)
    track_windows: int = Field(100, ge=10)  # "track": the stream's last accepted window scores whose median is tracked
    # "track": a run of flagged windows this long is taken as the stream's new normal (0 = never).
    track_settle_windows: int = Field(300, ge=0)

    @model_validator(mode="after")
    def _check(self) -> CalibrationConfig:
        if self.linear_components and self.aggregation != "max":
            raise ValueError('linear_components needs aggregation = "max" (its terms join the channels\' maximum)')
        if self.linear_components and not self.linear_terms:
            raise ValueError('linear_terms must name at least one of "t2", "q"')
        return self


class ScoringConfig(_Section):
    batch_size: int = Field(1024, gt=0)
    max_batch_delay_ms: float = Field(50.0, ge=0)
    torch_threads: int = Field(1, gt=0)  # also the onnxruntime session's threads with backend "onnx"
    # "onnx" scores with the bundle's model.onnx (`ae-monitor export --onnx`) in onnxruntime, without torch.
    backend: Literal["torch", "onnx"] = "torch"
    # Bundles of one architecture (per-stream learned models) run in one vectorised call per micro-batch over their
    # stacked weights instead of one call each (engine/grouped.py); false scores every bundle alone.
    group_models: bool = True


class AlertingConfig(_Section):
    """Per-stream alert decisions: k of the last n windows above the threshold fire; hysteresis resolves."""

    k: int = Field(1, gt=0)
    n: int = Field(1, gt=0)
    exit_ratio: float = Field(0.9, gt=0, le=1)
    min_duration_s: float = Field(0.0, ge=0)
    cooldown_s: float = Field(0.0, ge=0)
    top_contributors: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AlertingConfig:
        if self.k > self.n:
            raise ValueError("k must not exceed n")
        return self


class DriftConfig(_Section):
    """Score-drift watch: live window scores of a bundle against its calibration scores (two-sample KS)."""

    enabled: bool = True
    window_scores: int = Field(500, ge=10)  # live scores in the sliding window
    min_scores: int = Field(100, ge=10)  # no verdict before this many live scores
    ks_limit: float = Field(0.3, gt=0, lt=1)  # KS statistic above which the threshold is reported stale

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        if self.min_scores > self.window_scores:
            raise ValueError("min_scores must not exceed window_scores")
        return self


class ReplayConfig(_Section):
    """Streaming over files: pacing, gaps and the JSONL alert sink."""

    _bundle = field_validator("bundle_path")(_bundle_reference)

    bundle_path: str | None = None  # a bundle directory or registry://<root>/<model>@<alias>
    pacing: Literal["fast", "realtime"] = "fast"
    speed: float = Field(1.0, gt=0)
    chunk_samples: int = Field(4096, gt=0)
    max_gap_s: float = Field(10.0, gt=0)
    alerts_path: str = "-"
    dead_letters_path: str | None = None


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class KafkaConnectionConfig(_Section):
    """How to reach the brokers; `extra` passes further client settings through (kafka-python names; with
    `client = "confluent"` the sasl_*/ssl_* names are mapped to librdkafka's, and dotted librdkafka names pass as
    they are). `client` picks the library: kafka-python (pure Python) or confluent-kafka (librdkafka)."""

    client: Literal["kafka-python", "confluent"] = "kafka-python"
    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    client_id: str = "ae-monitor"
    connect_timeout_s: float = Field(30.0, gt=0)
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)


class KafkaSourceConfig(_Section):
    """Consuming records: a consumer group over topics or a pattern, manual commits only."""

    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    group_id: str = "ae-monitor"
    start_from: Literal["earliest", "latest"] = "latest"
    # Large polls amortise the per-stream work of a micro-batch (measured: 2,000 -> 10,000 took `serve` from about
    # 60 % to over 80 % of the plain consumer ceiling); a poll returns at once with what is buffered, so a quiet
    # topic still gets small, prompt batches.
    max_poll_records: int = Field(10000, gt=0)
    # At most this much of one partition per fetch request (both clients' default: 1 MiB). 1 MiB holds ~30 one-second
    # 16 kHz audio chunks, so an audio consumer waits for a fetch every ~30 chunks; larger fetches carry more per
    # round trip (measured in docs/serve.md). The fetch response's total limit is raised with it when needed.
    max_partition_fetch_bytes: int = Field(1024 * 1024, gt=0)
    session_timeout_ms: int = Field(10000, gt=0)
    commit_interval_s: float = Field(1.0, gt=0)
    rebalance_stall_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> KafkaSourceConfig:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("set exactly one of topics or topic_pattern")
        return self


class StreamsConfig(_Section):
    """Per-stream state bounds."""

    max_streams: int = Field(10000, gt=0)
    idle_eviction_s: float = Field(3600.0, gt=0)
    late_tolerance_s: float = Field(0.0, ge=0)


class RouteConfig(_Section):
    """Streams whose id (or routing `field`) matches `match` are scored with `bundle_path`. First match wins.

    `field`: "stream" matches the stream id; any other name matches that top-level string field of a sensor record
    (e.g. {"machine_type": "pump", ...}) or that header of an audio chunk. A stream without the field matches no
    route on it."""

    match: str = "*"
    syntax: Literal["glob", "regex"] = "glob"
    field: str = Field("stream", pattern=r"^[A-Za-z0-9_.-]+$")
    # A bundle directory, or registry://<root>/<model>@<alias>: reloaded when the alias moves. Optional only for a
    # learning route: its streams are then not scored until their own model is learned.
    bundle_path: str | None = None
    # Per-stream learning (docs/operations.md "Per-stream learning"): "per_stream" gives each stream of the route a
    # model of its own, trained on its first `probation_samples` sample rows (scored by `bundle_path` meanwhile) and
    # registered in the folder registry `learned_registry`; `learn_config` (a config file) gives its features, model,
    # training and calibration settings, else those recorded in `bundle_path` are used. Sensor streams only.
    learn: Literal["none", "per_stream"] = "none"
    # "scratch": a fresh network; "route_bundle": the route bundle's network fine-tuned on the stream's rows (its
    # features' scaling refitted), which needs the bundle's [features] and [model].
    learn_from: Literal["scratch", "route_bundle"] = "scratch"
    probation_samples: int = Field(2000, gt=0)
    # Ends the probation once the kept rows span this much event time, even with fewer than probation_samples (but
    # never with fewer than training needs). None: probation_samples alone.
    probation_s: float | None = Field(None, gt=0)
    learned_registry: str | None = None
    learn_config: str | None = None

    _bundle = field_validator("bundle_path")(_bundle_reference)

    @model_validator(mode="after")
    def _check_learning(self) -> RouteConfig:
        if self.learn == "none":
            if self.bundle_path is None:
                raise ValueError("bundle_path is required (it may be left out only with learn = 'per_stream')")
            if self.learned_registry is not None or self.learn_config is not None:
                raise ValueError("learned_registry and learn_config are only used with learn = 'per_stream'")
            return self
        if self.bundle_path is None and (self.learn_config is None or self.learn_from != "scratch"):
            raise ValueError("a learning route without bundle_path needs learn_config (its training settings) and "
                             "learn_from = 'scratch'")  # fmt: skip
        if not self.learned_registry:
            raise ValueError("learn = 'per_stream' needs learned_registry, the registry folder of the learned models")
        if self.learned_registry.startswith(("http://", "https://", REGISTRY_SCHEME)):
            raise ValueError("learned_registry must be a folder (an MLflow registry is not supported for learning yet)")
        return self

    @field_validator("field")
    @classmethod
    def _routable(cls, value: str) -> str:
        if value in ("ts", "values"):
            raise ValueError(f"'{value}' is part of every record; route on 'stream' or another field")
        return value


class RetrainConfig(_Section):
    """Continual retraining of learned per-stream models with shadow promotion (serve/learning.py)."""

    enabled: bool = False
    reservoir_samples: int = Field(2000, gt=0)  # recent rows kept per scoring stream (samples x channels x 8 B)
    holdback_samples: int = Field(300, gt=0)  # the reservoir's newest rows: not trained on, the fault check's data
    lookback_windows: int = Field(300, gt=0)  # the trigger's look-back: a stream's last windows
    alert_share: float = Field(0.5, gt=0, le=1)  # the trigger: this share of the look-back's windows anomalous
    shadow_windows: int = Field(300, gt=0)  # the candidate scores this many windows in shadow before the decision
    fault_offset_sd: float = Field(6.0, gt=0)  # the synthetic fault: one channel offset by this many of its SDs
    # The schedule: a model registered longer ago than this (production, or the last candidate tried) is retrained
    # once its reservoir is full; 0 = no schedule.
    max_model_age_s: float = Field(0.0, ge=0)
    on_drift: bool = True  # the drift watch ([drift]) of a stream's own model starting an episode retrains it
    # Streams retraining at once (a candidate training or in shadow); others that are due wait their turn.
    max_retraining_streams: int = Field(10, gt=0)

    @model_validator(mode="after")
    def _check_holdback(self) -> RetrainConfig:
        if self.holdback_samples >= self.reservoir_samples:
            raise ValueError("holdback_samples must be less than reservoir_samples (the rest trains the candidate)")
        return self


class LearningConfig(_Section):
    """The background trainer of per-stream learning routes (`[[routes]] learn = "per_stream"`)."""

    # "process": one worker process (spawned, torch threads 1): training never competes with scoring for the GIL.
    # "thread": a worker thread in serve's process (tests, small machines).
    worker: Literal["process", "thread"] = "process"
    max_pending_trainings: int = Field(4, gt=0)  # jobs queued or running; more streams wait with their data
    max_probation_streams: int = Field(100, gt=0)  # streams buffering at once (memory: samples x channels x 8 B each)
    retry_after_s: float = Field(300.0, ge=0)  # a failed training is tried again this much later (same data)
    torch_threads: int = Field(1, gt=0)
    retrain: RetrainConfig = RetrainConfig()  # [learning.retrain]


class KafkaSinkConfig(_Section):
    alerts_topic: str | None = "ae-monitor-alerts"
    scores_topic: str | None = None
    codes_topic: str | None = None
    cleaned_topic: str | None = None
    dead_letter_topic: str | None = "ae-monitor-dead-letters"
    state_topic: str | None = "ae-monitor-alert-state"
    send_timeout_s: float = Field(10.0, gt=0)


class HttpSinkConfig(_Section):
    url: str | None = None
    timeout_s: float = Field(5.0, gt=0)
    max_retries: int = Field(5, ge=0)  # unused since the delivery queue does all retrying; kept so configs load
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)


class SinksConfig(_Section):
    jsonl_path: str | None = None
    kafka: KafkaSinkConfig = KafkaSinkConfig()
    alertmanager: HttpSinkConfig = HttpSinkConfig()
    webhook: HttpSinkConfig = HttpSinkConfig()
    max_pending_alerts: int = Field(10000, gt=0)


class ServiceConfig(_Section):
    """The daemon process: health server, shutdown and reload."""

    http_host: str = "127.0.0.1"
    http_port: int = Field(9108, ge=0, le=65535)
    shutdown_grace_s: float = Field(20.0, gt=0)
    heartbeat_stale_s: float = Field(30.0, gt=0)
    reload_check_s: float = Field(10.0, ge=0)
    log_format: Literal["json", "text"] = "json"
    watchdog: bool = True


class Config(_Section):
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    scoring: ScoringConfig = ScoringConfig()
    alerting: AlertingConfig = AlertingConfig()
    drift: DriftConfig = DriftConfig()
    replay: ReplayConfig = ReplayConfig()
    metrics: MetricsConfig = MetricsConfig()
    kafka: KafkaConnectionConfig = KafkaConnectionConfig()
    source: KafkaSourceConfig | None = None
    streams: StreamsConfig = StreamsConfig()
    routes: tuple[RouteConfig, ...] = ()
    learning: LearningConfig = LearningConfig()
    sinks: SinksConfig = SinksConfig()
    service: ServiceConfig = ServiceConfig()


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (TOML), apply `AE_MONITOR_*` overrides from `environ`, validate, and return the config.

    Raises ConfigError listing every problem, each with its key path.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    apply_env_overrides(data, os.environ if environ is None else environ)
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = "unknown key (not a setting of this section)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Set `data[section][key]...` from each `AE_MONITOR_SECTION__KEY` variable, in place."""
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name} sets a key inside a non-table", key=".".join(path))
            node = child
        node[path[-1]] = _parse_env_value(raw)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def dump_config(config: Config) -> str:
    """The resolved config as TOML text (what `ae-monitor config check` prints), secrets redacted."""
    lines: list[str] = []
    _dump_table(redact(config.model_dump(mode="json")), [], lines)
    return "\n".join(lines).strip() + "\n"


def is_secret_key(name: str) -> bool:
    """Whether the value of a setting (or header) called `name` is a secret, never to be printed or logged.

    >>> [is_secret_key(k) for k in ("sasl_plain_password", "Authorization", "X-Api-Key", "sasl_plain_username")]
    [True, True, True, True]
    >>> [is_secret_key(k) for k in ("sasl_mechanism", "ssl_keyfile", "bootstrap_servers", "top_contributors")]
    [False, False, False, False]
    """
    lowered = name.lower()
    if lowered in _NOT_SECRET:
        return False
    return lowered.startswith("sasl_") or not _SECRET_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", lowered))


def redact(value: Any, *, key: str = "") -> Any:
    """A copy of a config dump (or of client settings) fit to print or log: the value of every secret-like key
    replaced by REDACTED, and credentials inside URLs too.

    >>> redact({"extra": {"sasl_plain_password": "hunter2", "acks": 1}, "url": "https://u:pw@host/x?token=t&a=1"})
    {'extra': {'sasl_plain_password': '<redacted>', 'acks': 1}, 'url': 'https://<redacted>@host/x?token=<redacted>&a=1'}
    """
    if value is not None and key and is_secret_key(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _redact_url(value)
    return value


def _redact_url(url: str) -> str:
    def param(match: re.Match[str]) -> str:
        return f"{match[1]}={REDACTED}" if is_secret_key(match[1]) else match[0]

    return _URL_SECRET_PARAM.sub(param, _URL_USERINFO.sub(f"{REDACTED}@", url))


def _dump_table(table: Mapping[str, Any], path: list[str], lines: list[str], *, array: bool = False) -> None:
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in table.items() if _is_table_array(v)}
    if path:
        lines.append(f"\n[[{'.'.join(path)}]]" if array else f"\n[{'.'.join(path)}]")
    for key, value in table.items():
        if key in tables or key in arrays:
            continue
        lines.append(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, [*path, key], lines)
    for key, items in arrays.items():
        for item in items:
            _dump_table(item, [*path, key], lines, array=True)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
