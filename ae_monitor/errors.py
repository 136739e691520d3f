"""Every exception ae_monitor raises, with messages written for the person running it.

    AeMonitorError
    ├── ConfigError            bad configuration: names the key path; stops startup
    ├── BundleError            missing, tampered, pickled or incompatible model bundle; stops startup
    ├── RegistryError          a model, version or alias the bundle registry does not have, or cannot change
    ├── DataError              a training/evaluation input that cannot be used (file, column, row)
    │   └── SampleRateError    audio at a rate the features were not built for
    ├── RecordError            one bad streaming record: dead-lettered with `reason`, never fatal
    ├── SinkError              a sink did not accept items (`sink` names it); retriable unless the sink refused them
    └── KafkaClientError       a Kafka client (either library) failed an operation; `refused` names a login/TLS refusal

`retriable` says whether trying the same thing again later may succeed.
"""

from __future__ import annotations


class AeMonitorError(Exception):
    """Base class; `retriable` tells callers whether a retry can help."""

    retriable = False


class ConfigError(AeMonitorError):
    """Configuration is invalid. `key` is the dotted path of the offending key, when there is one."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class BundleError(AeMonitorError):
    """A model bundle cannot be loaded or written. `field` names the manifest field or file at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class RegistryError(AeMonitorError):
    """The bundle registry (ae_monitor/registry/) has no such model, version or alias, or refused a change.
    The message starts with what it is about: `model 'pump' version 3: ...`, `model 'pump' alias 'production': ...`."""

    def __init__(self, message: str, *, model: str, version: int | None = None, alias: str | None = None) -> None:
        self.model, self.version, self.alias = model, version, alias
        where = f"model {model!r}" + (f" version {version}" if version is not None else "")
        where += f" alias {alias!r}" if alias is not None else ""
        super().__init__(f"{where}: {message}")


class DataError(AeMonitorError):
    """Input data for training, calibration or evaluation cannot be used as given."""


class SampleRateError(DataError):
    """Audio arrived at a sample rate the features were not configured for."""


class RecordError(AeMonitorError):
    """A single streaming record is unusable. `reason` is a short, stable label used in metrics."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class SinkError(AeMonitorError):
    """A sink did not accept what it was sent. `sink` names it; `retriable` is False when a retry cannot help
    (say an HTTP 400: the receiver rejects the payload itself)."""

    retriable = True

    def __init__(self, message: str, *, sink: str, retriable: bool = True, retry_after_s: float | None = None) -> None:
        self.sink = sink
        self.retriable = retriable
        self.retry_after_s = retry_after_s  # how long the receiver asked us to wait (HTTP Retry-After), if it said
        super().__init__(f"sink {sink}: {message}")


class KafkaClientError(AeMonitorError):
    """A Kafka client operation failed, in the words of the library that runs it (kafka-python or librdkafka).
    `retriable`: the client says a retry can help (a timeout, a leader change, a rebalance in progress); `refused`:
    the broker refused the credentials or the TLS handshake (the reason), which no retry fixes."""

    def __init__(self, message: str, *, retriable: bool = False, refused: str | None = None) -> None:
        self.retriable = retriable
        self.refused = refused
        super().__init__(message)
