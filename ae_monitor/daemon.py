"""`ae-monitor serve`: the main loop of the daemon (Kafka in, micro-batches scored, alerts out, offsets committed).

One iteration: poll up to `max_poll_records` messages (waiting at most `scoring.max_batch_delay_ms`), apply
rebalance events, dead-letter what did not decode, score the rest as one micro-batch, hand alerts to the delivery
queue, persist changed alert states, and commit every partition up to its longest completed prefix — only while
no alert is waiting for delivery. See docs/serve.md for restart and rebalance behaviour.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ae_monitor.config import Config, RouteConfig
from ae_monitor.errors import AeMonitorError, ConfigError, SinkError
from ae_monitor.health import Health, SystemdNotifier
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.pipeline import Pipeline, RecordPosition
from ae_monitor.records import Alert, CleanedWindow, DeadLetter, VectorCode, WindowScore
from ae_monitor.sinks import DeadLetterSink
from ae_monitor.sources.decode import kafka_source, payload_text
from ae_monitor.sources.kafka import KafkaSource, Partition, Polled, Rejected
from ae_monitor.sources.offsets import OffsetTracker

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 1.0  # idle eviction, lag gauges and reload checks need no more than this


class AlertQueue(Protocol):
    """What the daemon needs of the alert delivery queue (ae_monitor.sinks.delivery.DeliveryQueue)."""

    @property
    def idle(self) -> bool: ...

    def offer(self, alerts: Sequence[Alert]) -> None: ...

    @property
    def full(self) -> bool: ...

    def retry(self, now_s: float | None = None) -> None: ...

    def drain(self, timeout_s: float) -> bool: ...


class StateStore(Protocol):
    def save(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Hand states over; may return before they are stored (see Settling)."""


@runtime_checkable
class Settling(Protocol):
    """An output whose `send`/`save` returns before the data is stored: nothing is committed until `settle` (which
    waits for the acknowledgements, or raises SinkError) has returned."""

    def settle(self) -> None: ...


@dataclass
class Outputs:
    """Where the daemon's results go; every `send`/`save` returns once accepted."""

    alerts: AlertQueue
    dead_letters: DeadLetterSink
    scores: Callable[[Sequence[WindowScore]], None] | None = None
    codes: Callable[[Sequence[VectorCode]], None] | None = None
    cleaned: Callable[[Sequence[CleanedWindow]], None] | None = None
    state: StateStore | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:  # closing must go on for the others; the error is logged
                log.exception("error while closing an output")


class QueueSink:
    """The pipeline's alert sink: hands alerts to the delivery queue, which keeps them even when a sink is down.

    A full queue is not an error here (the alerts are kept); the daemon sees `full` and stops consuming."""

    def __init__(self, queue: AlertQueue) -> None:
        self._queue = queue

    def send(self, alerts: Sequence[Alert]) -> None:
        try:
            self._queue.offer(alerts)
        except SinkError as exc:
            log.warning("alert delivery queue is full; consumption pauses until sinks recover: %s", exc)


def load_routed_bundles(config: Config) -> tuple[dict[str, Bundle], list[tuple[RouteConfig, str]], dict[str, Path]]:
    """Load and verify every bundle the routes name (a bad one stops startup, naming it)."""
    routes: tuple[RouteConfig, ...] = config.routes
    if not routes:
        if config.replay.bundle_path is None:
            raise AeMonitorError("no bundle to serve: add a [[routes]] table with bundle_path (or replay.bundle_path)")
        routes = (RouteConfig(bundle_path=config.replay.bundle_path),)
    bundles: dict[str, Bundle] = {}
    paths: dict[str, Path] = {}
    pairs = []
    for route in routes:
        path = Path(route.bundle_path)
        key = str(path.resolve())
        if key not in bundles:
            bundles[key] = load_bundle(path)
            paths[key] = path
        pairs.append((route, key))
    return bundles, pairs, paths


class Daemon:
    """Owns the source, the pipeline and the outputs for one `serve` process."""

    def __init__(
        self,
        config: Config,
        *,
        source: KafkaSource,
        pipeline: Pipeline,
        outputs: Outputs,
        metrics: Metrics,
        health: Health,
        notifier: SystemdNotifier,
        bundle_paths: Mapping[str, Path],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config, self._source, self._pipeline, self._out = config, source, pipeline, outputs
        self._metrics, self._health, self._notifier, self._clock = metrics, health, notifier, clock
        self._paths = dict(bundle_paths)
        if config.source is None:
            raise ConfigError("serve needs a [source] table (topics or topic_pattern)", key="source")
        self._commit_interval_s = config.source.commit_interval_s
        # One entry per partition and poll, marked with the newest position of each of its streams.
        self._tracker: OffsetTracker[list[RecordPosition]] = OffsetTracker()
        self._partition_streams: dict[Partition, set[str]] = {}
        self._last_commit = self._last_housekeeping = self._last_reload_check = 0.0
        self._mtimes = {name: _mtime(path) for name, path in self._paths.items()}
        self.reload_requested = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set, then drain: finish the batch, deliver, commit, close."""
        self._health.set("bundles", True)
        self._health.set("source", True)
        self._notifier.ready()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self._drain()

    def step(self) -> None:
        """One iteration of the main loop (public so tests can drive the daemon deterministically)."""
        timeout_ms = int(self._config.scoring.max_batch_delay_ms)
        if self._out.alerts.full:
            polled = Polled.empty()  # back-pressure: nothing more is consumed until the sinks take what is queued
            time.sleep(timeout_ms / 1000)
        else:
            polled = self._source.poll(timeout_ms=max(1, timeout_ms))
        self._apply_rebalance()
        arrival = self._clock()
        if polled.chunks:
            self._process(polled, arrival)
        self._out.alerts.retry()
        self._maybe_commit(force=False)
        self._housekeeping()
        self._health.beat()
        self._metrics.heartbeat.set(self._clock())
        if self._config.service.watchdog:
            self._notifier.watchdog()

    def _process(self, polled: Polled, arrival: float) -> None:
        if polled.rejected:
            self._dead_letter_messages(polled.rejected)
        result = self._pipeline.process_batch(polled.items, arrival_s=arrival)
        for chunk in polled.chunks:
            partition = (chunk.topic, chunk.partition)
            newest = result.progress.latest(chunk.first_row, chunk.end_row)
            self._tracker.add(partition, chunk.last_offset, newest or None)
            self._partition_streams.setdefault(partition, set()).update(p.stream for p in newest)
        if self._out.scores is not None and result.window_count:
            self._out.scores(result.windows)
        if self._out.state is not None:
            changed = self._pipeline.take_changed_alert_states()
            if changed:
                self._out.state.save(changed)

    def _dead_letter_messages(self, bad: list[Rejected]) -> None:
        letters = []
        for message in bad:
            letter = DeadLetter(
                source=kafka_source(message.topic, message.partition, message.offset),
                reason=message.error.reason,
                message=str(message.error),
                payload=payload_text(message.raw),
            )
            letters.append(letter)
            self._metrics.dead_letters.labels(letter.reason).inc()
        self._out.dead_letters.send(letters)

    def _apply_rebalance(self) -> None:
        for event in self._source.take_rebalance_events():
            if event.kind in ("revoked", "lost"):
                streams = sorted({s for p in event.partitions for s in self._partition_streams.pop(p, set())})
                self._pipeline.drop_streams(streams, reason=event.kind)
                self._tracker.forget(event.partitions)
                log.info("partitions %s %s; dropped %d streams", sorted(event.partitions), event.kind, len(streams))
            else:
                log.info("partitions assigned: %s", sorted(event.partitions))
        owned = self._source.assignment()
        self._health.set("partitions", bool(owned))
        self._metrics.partitions.set(len(owned))
        self._metrics.ready.set(1 if self._health.ready()[0] else 0)

    def _maybe_commit(self, *, force: bool) -> None:
        now = self._clock()
        if not force and now - self._last_commit < self._commit_interval_s:
            return
        if not self._out.alerts.idle:
            return  # never commit past an alert that is still waiting for delivery
        for output in (self._out.state, self._out.dead_letters):
            if isinstance(output, Settling):
                try:
                    output.settle()
                except SinkError as exc:
                    log.warning("%s; no commit this time (the records are kept, nothing is lost)", exc)
                    return
        offsets = self._tracker.committable(self._all_done, every=force or self._source.stalled)
        if offsets:
            self._source.commit(offsets, wait=force)
        if self._source.last_commit_s is not None:
            self._metrics.last_commit.set(self._source.last_commit_s)
        self._last_commit = now

    def _all_done(self, positions: list[RecordPosition]) -> bool:
        return all(self._pipeline.is_done(position) for position in positions)

    def _housekeeping(self) -> None:
        now = self._clock()
        if now - self._last_housekeeping < HOUSEKEEPING_EVERY_S:
            return
        self._last_housekeeping = now
        for name in self._pipeline.evict_idle(now):
            for streams in self._partition_streams.values():
                streams.discard(name)
        if self._source.stalled:
            self._source.recover()  # its revocations reach _apply_rebalance on the next step
        for (topic, partition), lag in self._source.lag().items():
            self._metrics.consumer_lag.labels(topic, str(partition)).set(lag)
        if self.reload_requested.is_set() or now - self._last_reload_check >= self._config.service.reload_check_s:
            self._last_reload_check = now
            self._check_reload()

    def _check_reload(self) -> None:
        changed = {n for n, p in self._paths.items() if _mtime(p) != self._mtimes.get(n)}
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            changed = set(self._paths)
        for name in changed:
            self._reload(name)

    def _reload(self, name: str) -> None:
        path = self._paths[name]
        self._mtimes[name] = _mtime(path)
        try:
            bundle = load_bundle(path)
            if bundle.version == self._pipeline.bundles[name].version:
                return
            self._pipeline.swap_bundle(name, bundle)
        except AeMonitorError as exc:
            self._metrics.reloads.labels("failed").inc()
            log.error("bundle reload of %s failed, keeping the loaded one: %s", path, exc)
            return
        self._metrics.reloads.labels("ok").inc()
        log.info("bundle %s reloaded: version %s", path, bundle.version)

    def _drain(self) -> None:
        self._notifier.stopping()
        deadline = time.monotonic() + self._config.service.shutdown_grace_s * 0.8
        try:
            self._out.alerts.drain(max(0.0, deadline - time.monotonic()))
            self._maybe_commit(force=True)
        except AeMonitorError as exc:  # undelivered alerts or a failed commit: the records are read again later
            log.error("shutting down without a final commit (records since the last one will be read again): %s", exc)
        finally:
            self._source.close()
            self._out.close()


def _mtime(path: Path) -> float:
    try:
        return (path / "manifest.json").stat().st_mtime
    except OSError:
        return 0.0
