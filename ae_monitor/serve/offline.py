"""The engine over finite sources: `ae-monitor replay`, the demo, and tests that stream files or memory.

`Runner` is the offline twin of the serve loop: poll a source, process each micro-batch, deliver the result to the
same outputs the daemon uses (serve.outputs.deliver), flush at the end of input.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from ae_monitor.config import Config, FeaturesConfig
from ae_monitor.engine import BatchResult, Engine
from ae_monitor.errors import DataError, SampleRateError
from ae_monitor.health import Health
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import load_bundle
from ae_monitor.records import DeadLetter, Record, SampleRows, WindowScore
from ae_monitor.serve.http import OFFLINE_CONDITIONS, metrics_server, offline_health
from ae_monitor.serve.outputs import Outputs, TeeSink, deliver, http_alert_sinks, send_dead_letters
from ae_monitor.sinks.jsonl import JsonlSink
from ae_monitor.sources.base import Source
from ae_monitor.sources.replay import ReplaySource, list_inputs, stream_name
from ae_monitor.sources.stdin import JsonLinesSource

log = logging.getLogger(__name__)


class Runner:
    """Processes micro-batches with `engine` and delivers each result to `outputs` before returning it."""

    def __init__(self, engine: Engine, outputs: Outputs, metrics: Metrics) -> None:
        self.engine, self._outputs, self._metrics = engine, outputs, metrics

    def process_batch(self, items: Sequence[Record | SampleRows], *, arrival_s: float | None = None) -> BatchResult:
        result = self.engine.process(items, arrival_s=arrival_s)
        deliver(result, self._outputs, self._metrics)
        return result

    def process(self, items: Sequence[Record | SampleRows]) -> list[WindowScore]:
        """One micro-batch; returns the window scores it produced."""
        return self.process_batch(items).windows

    def flush(self) -> list[WindowScore]:
        """End of input: what the streams hold back (audio end padding)."""
        result = self.engine.flush()
        deliver(result, self._outputs, self._metrics)
        return result.windows

    def run(self, source: Source, *, max_records: int = 256) -> int:
        """Consume `source` until it is exhausted; returns the number of windows scored."""
        scored = 0
        while not source.exhausted:
            scored += self.process_batch(source.poll(max_records=max_records)).window_count
        return scored + len(self.flush())


def replay(config: Config, bundle_path: Path, inputs: Sequence[str | Path]) -> int:
    """Stream `inputs` (files, or `-` for JSON lines on stdin) through the engine with the bundle; alerts go to
    `replay.alerts_path` and to the Alertmanager and webhook sinks of `[sinks]` that have a url, dead letters to
    `replay.dead_letters_path` (stderr when unset). Returns windows scored."""
    bundle = load_bundle(
        bundle_path,
        expected_features=config.features,
        backend=config.scoring.backend,
        threads=config.scoring.torch_threads,
    )
    check_stream_names(inputs, config.features)
    check_audio_rates(inputs, config.features)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = offline_health()
    alerts = JsonlSink.open(config.replay.alerts_path)
    path = config.replay.dead_letters_path
    dead = JsonlSink.open(path) if path else JsonlSink(sys.stderr)
    source = _replay_source(config, inputs, dead, metrics)
    engine = Engine(bundle, alerting=config.alerting, metrics=metrics, drift=config.drift, online=config.calibration,
                    max_gap_s=config.replay.max_gap_s, batch_size=config.scoring.batch_size)  # fmt: skip
    closers: list[Callable[[], None]] = [alerts.close, dead.close]
    try:
        with metrics_server(config.metrics, registry, health=health) as port:
            url = None if port is None else f"http://{config.metrics.host}:{port}/metrics"
            http, close_http = http_alert_sinks(config.sinks, generator_url=url)
            closers += close_http
            outputs = Outputs(alerts=TeeSink(alerts, *http.values()), dead_letters=dead)
            mark_ready(health, metrics, True)
            windows = Runner(engine, outputs, metrics).run(source)
            mark_ready(health, metrics, False)
    finally:
        for close in closers:
            close()
    log.info("replay done: %d windows scored over %d streams", windows, len(engine.streams))
    return windows


def _replay_source(config: Config, inputs: Sequence[str | Path], dead: JsonlSink, metrics: Metrics) -> Source:
    if [str(i) for i in inputs] != ["-"]:
        return ReplaySource(inputs, config.features, chunk_samples=config.replay.chunk_samples,
                            pacing=config.replay.pacing, speed=config.replay.speed)  # fmt: skip

    def dead_letter(letter: DeadLetter) -> None:
        send_dead_letters([letter], dead, metrics)

    return JsonLinesSource(sys.stdin, on_dead_letter=dead_letter)


def mark_ready(health: Health, metrics: Metrics, ready: bool) -> None:
    """Bundle loaded and source open (or, at the end, closed): /readyz and `ae_monitor_ready` say so."""
    for condition in OFFLINE_CONDITIONS:
        health.set(condition, ready)
    metrics.ready.set(1 if ready else 0)


def check_stream_names(inputs: Sequence[str | Path], features: FeaturesConfig) -> None:
    """Refuse inputs whose files would share a stream name (`valve1/0.csv` and `valve2/0.csv` given as the folders
    `valve1` and `valve2` are both stream `0`): their samples would merge into one stream."""
    if [str(i) for i in inputs] == ["-"]:
        return
    seen: dict[str, Path] = {}
    for path, root in list_inputs(inputs, features):
        name = stream_name(path, root)
        if name in seen and seen[name] != path:
            raise DataError(f"{seen[name]} and {path} would both be stream {name!r}: replay the folder that holds "
                            "both (streams are named by the path below it), or one folder at a time")  # fmt: skip
        seen[name] = path


def check_audio_rates(inputs: Sequence[str | Path], features: FeaturesConfig) -> None:
    """Stop before streaming when an audio file's sample rate is not the features' (and resampling is off): each
    of its records would otherwise be dead-lettered, one by one."""
    if features.kind != "logmel" or features.logmel.resample or [str(i) for i in inputs] == ["-"]:
        return
    import soundfile

    expected = features.logmel.sample_rate_hz
    for path, _ in list_inputs(inputs, features):
        try:
            rate = int(soundfile.info(str(path)).samplerate)
        except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            raise DataError(f"cannot read audio file {path}: {exc}") from exc
        if rate != expected:
            raise SampleRateError(f"{path} is sampled at {rate} Hz; the bundle's features expect {expected} Hz: "
                                  "resample the file, or set features.logmel.resample = true")  # fmt: skip
