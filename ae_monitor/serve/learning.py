"""Per-stream learning (`[[routes]] learn = "per_stream"`): a stream without a model of its own gets one.

Each stream of such a route goes through these states, exported as `ae_monitor_learning_streams{state}` and on
/readyz:

    learning   scored by the route's bundle (not at all on a route without one) while its first
               `probation_samples` sample rows are kept (the probation buffer); then a background trainer fits and
               calibrates a model on them and registers it in the route's `learned_registry` as
               `<stream model name>@production`
    scoring    scored by that model, from the micro-batch after it was registered; a move of its alias (a
               promotion or rollback by hand) is followed every `service.reload_check_s`
    retraining with `[learning.retrain] enabled`: once its alert share stays high, its model's drift watch
               fires, or its model is older than `max_model_age_s`, a candidate trains on its reservoir, then
               scores beside production in shadow (its alerts counted, never sent); promoted to `production` or
               discarded, it is scoring again (serve/retraining.py). At most `max_retraining_streams` retrain at once.

The trainer (`Trainer`, from the jobs layer, injected by the CLI) runs in one worker process (or thread): the main
loop only hands it a job and, on a later iteration, loads what it registered. A failed training is logged, counted
and tried again `learning.retry_after_s` later; serve never stops for it. A stream first seen by this process (a
restart, a partition that moved here) looks up its model in the registry before it starts learning, so a model is
learned once per stream, not once per owner. The probation buffer lives in memory only: a stream whose owner
changes while it learns starts its probation again with its new owner.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from ae_monitor.config import (
    AlertingConfig,
    CalibrationConfig,
    Config,
    LearningConfig,
    RetrainConfig,
    RouteConfig,
    load_config,
)
from ae_monitor.engine import BatchResult, Engine
from ae_monitor.engine.routing import Router
from ae_monitor.errors import AeMonitorError, ConfigError, RegistryError
from ae_monitor.metrics import LEARNING_STATES, Metrics
from ae_monitor.model.bundle import Bundle, load_bundle
from ae_monitor.records import Record, SampleRows, SensorRecord
from ae_monitor.registry import Registry, stream_model_name
from ae_monitor.serve.retraining import Reservoir, Shadow, Trigger, registered_s, retrain_trigger, shadow_decision

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
ALIAS = "production"
CANDIDATE = "candidate"  # the alias of a retrained model while it is in shadow


@dataclass(frozen=True)
class LearnJob:
    """What the trainer needs to learn one stream's model: plain data, since it crosses to a worker process."""

    stream: str
    model: str  # the registry model name (registry.stream_model_name)
    registry_root: str
    config: Config  # its [features] [model] [training] [calibration] train the model
    ts_s: F64
    values: F64  # (samples, channels), in `channels` order
    channels: tuple[str, ...]
    note: str  # where the settings came from, kept in the version's provenance
    init_bundle: str | None = None  # fine-tune this bundle's network (a folder or registry:// reference)
    # A retraining: `parent` is the production version; the held-back rows (not trained on) get the fault check.
    parent: int | None = None
    holdback_ts: F64 = field(default_factory=lambda: np.zeros(0))
    holdback: F64 = field(default_factory=lambda: np.zeros((0, 0)))
    fault_offset_sd: float = 0.0


@dataclass(frozen=True)
class Learned:
    """A registered model of a stream: `bundle_path` is its version's bundle folder."""

    stream: str
    model: str
    version: int
    bundle_path: str
    # A candidate's fault check: per channel, the share of flagged windows (production, candidate) of the held-back
    # rows with that channel offset (jobs.learn.fault_check).
    fault_check: Mapping[str, tuple[float, float]] = field(default_factory=dict)


class Trainer(Protocol):
    """Fits, calibrates and registers a stream's model (ae_monitor/jobs/learn.py)."""

    def check(self, config: Config, samples: int) -> None:
        """Raise DataError when `samples` rows cannot give a model under `config` (too few windows)."""

    def __call__(self, job: LearnJob) -> Learned: ...


@dataclass(frozen=True)
class LearnRoute:
    """A learning route, as serve resolved it at startup: training settings and the channels a stream must send."""

    route: RouteConfig
    config: Config
    channels: tuple[str, ...]
    note: str
    init_bundle: str | None = None  # with learn_from = "route_bundle": the route's bundle, resolved by the trainer
    min_samples: int = 1  # the fewest rows the trainer accepts (a probation cut short by probation_s keeps this many)


def channel_order(training: Sequence[str], channels: Sequence[str]) -> npt.NDArray[np.int64] | None:
    """Where each training channel is in `channels`; None when one is missing (the engine dead-letters such rows;
    they are not kept)."""
    if not set(training) <= set(channels):
        return None
    return np.array([list(channels).index(name) for name in training], dtype=np.int64)


class Probation:
    """A stream's first `limit` sample rows (timestamps increasing: late or repeated rows are skipped), kept for
    training. Full once `limit` rows are in, or once they span `span_s` of event time and number at least
    `min_count`; it takes no more."""

    def __init__(self, limit: int, channels: Sequence[str], *, span_s: float | None = None, min_count: int = 1) -> None:
        self.limit, self.channels, self.span_s, self.min_count = limit, tuple(channels), span_s, min_count
        self.done = False
        # Allocated whole up front: the memory bound is the limit anyway, and appends become slice writes.
        self._ts = np.empty(limit, dtype=np.float64)
        self._values = np.empty((limit, len(self.channels)), dtype=np.float64)
        self.count = 0
        self._last_ts = -np.inf

    @property
    def full(self) -> bool:
        return self.done or self.count >= self.limit

    def order(self, channels: Sequence[str]) -> npt.NDArray[np.int64] | None:
        return channel_order(self.channels, channels)

    def add(self, ts_s: npt.ArrayLike, values: npt.ArrayLike, channels: Sequence[str]) -> None:
        """Keep the rows of `values` (columns named by `channels`) that are newer than the last kept, up to the
        limit."""
        order = self.order(channels)
        if order is not None and not self.full:
            self.add_ordered(np.asarray(ts_s, dtype=np.float64), np.asarray(values, dtype=np.float64)[:, order])

    def add_ordered(self, ts: F64, values: F64) -> None:
        """`add` for values already in the training channels' order."""
        room = self.limit - self.count
        if self.full or not len(ts):
            return
        if ts[0] > self._last_ts and (len(ts) == 1 or bool(np.all(ts[1:] > ts[:-1]))):
            keep: slice | npt.NDArray[np.intp] = slice(0, room)  # rows in order: the common case, no index arrays
        else:
            newest = np.maximum.accumulate(np.concatenate([[self._last_ts], ts]))[:-1]
            keep = np.flatnonzero(ts > newest)[:room]
        kept = ts[keep]
        n = len(kept)
        if n:
            self._ts[self.count : self.count + n] = kept
            self._values[self.count : self.count + n] = values[keep]
            self.count += n
            self._last_ts = float(kept[-1])
            spanned = self.span_s is not None and self._last_ts - self._ts[0] >= self.span_s
            self.done = spanned and self.count >= self.min_count

    def rows(self) -> tuple[F64, F64]:
        """The kept timestamps and values (samples, channels)."""
        return self._ts[: self.count].copy(), self._values[: self.count].copy()


@dataclass
class StreamLearning:
    """One stream of a learning route: its state, its probation buffer (None while it waits for room), the
    training in flight and when a failed one may run again."""

    route: LearnRoute
    model: str
    state: str = "learning"
    probation: Probation | None = None
    training: Future[Learned] | None = None
    retry_at_s: float = 0.0
    failures: int = 0
    version: int | None = None  # the registry version it is scored with
    seen_s: float = 0.0  # when its newest record was observed (the learner's clock)
    reservoir: Reservoir | None = None  # scoring, with retraining enabled
    shadow: Shadow | None = None  # retraining: the candidate in shadow
    parent: int | None = None  # retraining: the production version its candidate was trained to replace
    bundle: Bundle | None = None  # the bundle of its own it is scored with (its series go when it is replaced)
    model_time_s: float = 0.0  # the schedule counts its model's age from here (wall clock, from the registry)
    drift_from: int | None = None  # its reservoir's `kept_total` when its model's drift watch fired


class Learner:
    """Per-stream learning for serve's main loop: `observe` each poll's items before the engine scores them, call
    `poll` on housekeeping, `drop` streams whose partitions moved away, tell it which were `evicted` for being idle,
    `close` at shutdown. With retraining enabled, hand it each batch's result too (`scored`)."""

    def __init__(
        self,
        routes: Sequence[tuple[RouteConfig, LearnRoute | None]],
        *,
        engine: Engine,
        trainer: Trainer,
        executor: Callable[[], Executor],
        cfg: LearningConfig,
        metrics: Metrics,
        alerting: AlertingConfig | None = None,
        backend: Literal["torch", "onnx"] = "torch",
        threads: int = 1,
        watch_every_s: float = 10.0,
        idle_after_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._learn = {str(i): learn for i, (_, learn) in enumerate(routes)}
        self._router = Router([(route, str(i)) for i, (route, _) in enumerate(routes)])
        self._engine, self._trainer, self._cfg = engine, trainer, cfg
        self._retrain = cfg.retrain if cfg.retrain.enabled else None
        self._alerting = alerting or AlertingConfig()  # the policy a candidate's would-be alerts follow in shadow
        self._new_executor = executor  # called again when a worker process died (the pool is then broken)
        self._executor = executor()
        self._metrics, self._backend, self._threads, self._clock = metrics, backend, threads, clock
        self._wall_clock = wall_clock  # the schedule's: model ages are registry times
        self._streams: dict[str, StreamLearning] = {}
        self._others: set[str] = set()  # streams of routes that do not learn
        self._watch_every_s, self._watched_at = watch_every_s, clock()
        self._idle_after_s = idle_after_s
        self._publish()

    # -- the main loop's calls ---------------------------------------------------------------------------------

    def observe(self, items: Iterable[Record | SampleRows]) -> None:
        """Keep the sample rows of learning streams (before the engine scores the batch: a stream that finds its
        model in the registry here is scored by it from this batch on), of scoring streams (their reservoirs) and
        of streams whose candidate scores in shadow."""
        items = items if isinstance(items, list) else list(items)  # read twice while a candidate is in shadow
        for item in items:
            if isinstance(item, SampleRows):
                self._observe_rows(item)
            elif isinstance(item, SensorRecord):
                learning = self._stream(item.stream, item.tags)
                if learning is not None and learning.probation is not None:
                    learning.probation.add(item.ts_s, item.values, item.channels)
                if learning is not None and learning.reservoir is not None:
                    order = channel_order(learning.reservoir.channels, item.channels)
                    if order is not None:
                        learning.reservoir.add_ordered(np.asarray(item.ts_s, dtype=np.float64),
                                                       np.asarray(item.values, dtype=np.float64)[:, order])  # fmt: skip
        for learning in self._streams.values():
            if learning.shadow is not None:
                self._metrics.shadow_alerts.labels(learning.model).inc(learning.shadow.feed(items))
        self._submit()
        self._publish()

    def scored(self, result: BatchResult) -> None:
        """Production's verdicts on the batch's windows: the reservoirs keep the rows of windows that did not alert,
        a shadow period counts production's windows; a reservoir that is due starts a retraining, a shadow period
        that is over is decided."""
        if self._retrain is None:
            return
        for table in result.tables:
            learning = self._streams.get(table.streams[0]) if len(table) else None
            if learning is None or table.bundle != learning.model:
                continue  # not a stream's own model (its windows came from the route's bundle)
            anomalous = table.score > table.threshold
            if learning.reservoir is not None:
                learning.reservoir.judge(table.start_s, table.end_s, anomalous)
                self._note_drift(table.streams[0], learning, learning.reservoir)
            if learning.shadow is not None:
                learning.shadow.production(len(table), int(anomalous.sum()))
        for stream, learning in list(self._streams.items()):
            shadow = learning.shadow
            if shadow is not None and shadow.windows >= self._retrain.shadow_windows:
                self._decide(stream, learning, shadow)
        self._submit()
        self._publish()

    def poll(self) -> None:
        """Take finished trainings (a registered model: the stream is scored by it from the next batch on; a
        failure: counted, tried again later), start waiting ones, give waiting streams room to buffer."""
        for stream, learning in list(self._streams.items()):
            if learning.training is not None and learning.training.done():
                self._finish(stream, learning, learning.training)
        # A stream that sends nothing for `streams.idle_eviction_s` is forgotten, buffer and all: the engine's idle
        # eviction does not see one of a route without a bundle, nor one it evicted while the stream's training was
        # in flight (a candidate in shadow that never sees a row again would hold a retraining place for ever).
        now, live = self._clock(), self._engine.streams
        idle = [s for s, learning in self._streams.items()
                if learning.training is None and now - learning.seen_s > self._idle_after_s
                and (learning.state == "learning" or s not in live)]  # fmt: skip
        self.evicted(idle)
        self._admit_waiting()
        self._submit()
        if self._clock() - self._watched_at >= self._watch_every_s:
            self._watched_at = self._clock()
            self._follow_aliases()
        self._publish()

    def drop(self, streams: Sequence[str]) -> None:
        """Forget `streams` (their partitions moved away; the engine dropped their states already). A training in
        flight still registers its model, which the stream's new owner then finds in the registry."""
        self._forget(streams)
        self._publish()

    def evicted(self, streams: Sequence[str]) -> None:
        """Streams dropped for being idle are forgotten unless a training of theirs is in flight: a learning one
        frees its probation buffer (it starts again when it comes back), a scoring one its reservoir, its candidate
        in shadow (left undecided) and its model (loaded from the registry again when it comes back)."""
        for stream in streams:
            self._others.discard(stream)
        self._forget([s for s in streams if s in self._streams and self._streams[s].training is None])
        self._publish()

    def close(self) -> None:
        """Stop the trainer: queued jobs are cancelled; a running one is abandoned (its process ends)."""
        processes = list((getattr(self._executor, "_processes", None) or {}).values())  # a ProcessPoolExecutor's
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            # No public call stops a running worker before Python 3.14: a training left running would hold the
            # exit of serve until it ends. Its model is not registered; the stream learns again after the restart.
            process.terminate()

    def counts(self) -> dict[str, int]:
        """Streams per state (for /readyz; read on the HTTP server's thread, hence the copy)."""
        states = [learning.state for learning in list(self._streams.values())]
        return {state: states.count(state) for state in LEARNING_STATES}

    # -- inside ------------------------------------------------------------------------------------------------

    def _forget(self, streams: Sequence[str]) -> None:
        """Forget `streams` (the engine dropped their states) with the models of their own and their series."""
        gone = [learning for learning in (self._streams.pop(s, None) for s in streams) if learning is not None]
        for stream in streams:
            self._others.discard(stream)
            self._router.forget(stream)
        self._engine.release_own_bundles(streams)
        for learning in gone:
            self._metrics.forget_shadow(learning.model)
        self._forget_series([learning.bundle for learning in gone if learning.bundle is not None])

    def _forget_series(self, bundles: Sequence[Bundle]) -> None:
        """Drop the series of bundles no longer loaded: each learned model adds 39 lines to /metrics (its name and
        version label them), which would otherwise stay for as long as the process runs. A name another slot still
        uses (a bundle registered by hand under several models) keeps its series."""
        if not bundles:
            return
        loaded = self._engine.bundles.values()
        names, versions = {b.name for b in loaded}, {(b.name, b.version) for b in loaded}
        for bundle in bundles:
            if bundle.name not in names:
                self._metrics.forget_bundle(bundle.name, version=bundle.version, channels=bundle.extractor.group_names)
            elif (bundle.name, bundle.version) not in versions:
                self._metrics.forget_bundle_version(bundle.name, bundle.version)

    def _score_with(self, stream: str, learning: StreamLearning, bundle: Bundle, number: int) -> None:
        """Score `stream` with `bundle`, version `number` of its model, from its next samples on."""
        replaced = learning.bundle
        self._engine.score_stream_with(stream, bundle)
        learning.bundle, learning.version = bundle, number
        learning.drift_from = None  # a drift episode of the model replaced; the new one has a watch of its own
        if replaced is not None and (replaced.name, replaced.version) != (bundle.name, bundle.version):
            self._forget_series([replaced])
        learning.model_time_s = self._model_time(learning)

    def _model_time(self, learning: StreamLearning) -> float:
        """When the schedule counts its model's age from: the registration of its `production` version or of the
        last candidate tried (`candidate`), whichever is later, so that a discarded candidate also waits a period;
        read from the registry, so a restart does not start the count again. Now when neither can be read."""
        if self._retrain is None or not self._retrain.max_model_age_s:
            return 0.0
        registry = Registry(str(learning.route.route.learned_registry))
        times = [registered_s(registry, learning.model, alias) for alias in (ALIAS, CANDIDATE)]
        return max((t for t in times if t is not None), default=self._wall_clock())

    def _note_drift(self, stream: str, learning: StreamLearning, reservoir: Reservoir) -> None:
        """A drift episode of the stream's own model asks for a retraining on the rows kept from now on."""
        assert self._retrain is not None
        watch = self._engine.own_drift_watch(stream) if self._retrain.on_drift else None
        if watch is not None and watch.take_episode():
            learning.drift_from = reservoir.kept_total
            log.info("stream %s: the drift watch of its model %s fired; it retrains once %d more rows that did not "
                     "alert are kept", stream, learning.model, reservoir.limit)  # fmt: skip

    def _observe_rows(self, rows: SampleRows) -> None:
        groups: dict[str, list[int]] = {}
        for i, stream in enumerate(rows.streams):
            if stream not in self._others:
                groups.setdefault(stream, []).append(i)
        ordered: dict[tuple[str, ...], F64 | None] = {}  # the block's values in each route's channel order, once
        for stream, indices in groups.items():
            learning = self._stream(stream, rows.tags_of(indices[0]) if rows.tags else None)
            reservoir = None if learning is None else learning.reservoir
            if reservoir is not None:
                if reservoir.channels not in ordered:
                    order = channel_order(reservoir.channels, rows.channels)
                    ordered[reservoir.channels] = None if order is None else rows.values[:, order]
                kept = ordered[reservoir.channels]
                if kept is not None:
                    at = np.asarray(indices)
                    reservoir.add_ordered(rows.ts_s[at], kept[at])
            probation = None if learning is None else learning.probation
            if probation is None or probation.full:
                continue
            if probation.channels not in ordered:
                order = probation.order(rows.channels)
                ordered[probation.channels] = None if order is None else rows.values[:, order]
            values = ordered[probation.channels]
            if values is not None:
                at = np.asarray(indices)
                probation.add_ordered(rows.ts_s[at], values[at])

    def _stream(self, stream: str, tags: Mapping[str, str] | None) -> StreamLearning | None:
        """The learning state of `stream`, made on its first record: its model from the registry when there is
        one (scoring), else a probation buffer (learning). None for a stream of a route that does not learn."""
        found = self._streams.get(stream)
        if found is not None:
            found.seen_s = self._clock()
        if found is not None or stream in self._others:
            return found
        slot = self._router.slot_for(stream, tags)
        route = None if slot is None else self._learn[slot]
        if route is None:
            self._others.add(stream)
            return None
        learning = StreamLearning(route, stream_model_name(stream), seen_s=self._clock())
        self._streams[stream] = learning
        registered = self._registered(learning)
        if isinstance(registered, AeMonitorError):
            log.error("stream %s: its registered model %s cannot be loaded (%s); learning it anew", stream,
                      learning.model, registered)  # fmt: skip
        if isinstance(registered, tuple):
            self._score_with(stream, learning, *registered)
            learning.state, learning.reservoir = "scoring", self._new_reservoir(route)
            log.info("stream %s: scored by its own model %s version %d from the registry", stream, learning.model,
                     learning.version)  # fmt: skip
        else:
            learning.probation = self._new_probation(route)
        return learning

    def _registered(
        self, learning: StreamLearning, *, unless: int | None = None
    ) -> tuple[Bundle, int] | AeMonitorError | None:
        """The bundle `production` names and its version number; None when there is none (not learned yet) or it
        names version `unless`; the error when it cannot be read or loaded."""
        root = learning.route.route.learned_registry
        assert root is not None  # RouteConfig requires it with learn = "per_stream"
        registry = Registry(root)
        try:
            number = registry.alias(learning.model, ALIAS).version
        except RegistryError:
            return None  # not learned yet
        if number == unless:
            return None
        try:
            path = registry.version(learning.model, number).bundle_path
            return load_bundle(path, backend=self._backend, threads=self._threads), number
        except AeMonitorError as exc:
            return exc

    def _follow_aliases(self) -> None:
        """Streams scoring with their own model follow its `production` alias: a version promoted (or rolled back)
        in the registry replaces the loaded one; one that cannot be loaded is refused, and the loaded one stays."""
        for stream, learning in list(self._streams.items()):
            if learning.state == "learning":
                continue
            found = self._registered(learning, unless=learning.version)
            if isinstance(found, AeMonitorError):
                self._metrics.reloads.labels("failed").inc()
                log.error("stream %s: %s@%s cannot be loaded, keeping version %s: %s", stream, learning.model, ALIAS,
                          learning.version, found)  # fmt: skip
                learning.version = self._alias_version(learning)  # said once per move of the alias
            elif found is not None:
                bundle, number = found
                self._metrics.reloads.labels("ok").inc()
                log.info("stream %s: %s@%s moved from version %s to %d; scoring with it", stream, learning.model,
                         ALIAS, learning.version, number)  # fmt: skip
                self._score_with(stream, learning, bundle, number)
                if learning.reservoir is not None:
                    learning.reservoir.clear()  # its rows were judged by the version that went
                if learning.shadow is not None:  # its candidate was measured against the version that went
                    self._discard(stream, learning, "production was moved by hand during its shadow period")

    def _alias_version(self, learning: StreamLearning) -> int | None:
        try:
            return Registry(str(learning.route.route.learned_registry)).alias(learning.model, ALIAS).version
        except RegistryError:
            return learning.version

    def _new_probation(self, route: LearnRoute) -> Probation | None:
        buffering = sum(1 for s in self._streams.values() if s.probation is not None)
        if buffering >= self._cfg.max_probation_streams:
            return None  # waits for room (learning.max_probation_streams bounds the memory)
        return Probation(route.route.probation_samples, route.channels, span_s=route.route.probation_s,
                         min_count=route.min_samples)  # fmt: skip

    def _admit_waiting(self) -> None:
        for learning in self._streams.values():
            if learning.state == "learning" and learning.probation is None:
                learning.probation = self._new_probation(learning.route)
                if learning.probation is None:
                    return

    def _submit(self) -> None:
        """Hand the trainer what is due, up to `max_pending_trainings` jobs in flight and, for retrainings, up to
        `max_retraining_streams` streams retraining; the schedule's go last, after those a stream's data asks for."""
        now, wall = self._clock(), self._wall_clock()
        most, age_s = (0, 0.0) if self._retrain is None else (self._retrain.max_retraining_streams,
                                                               self._retrain.max_model_age_s)  # fmt: skip
        pending = sum(1 for s in self._streams.values() if s.training is not None)
        retraining = sum(1 for s in self._streams.values() if s.state == "retraining") if most else 0
        scheduled: list[tuple[str, StreamLearning]] = []
        for stream, learning in self._streams.items():
            if pending >= self._cfg.max_pending_trainings:
                return
            if learning.training is not None or now < learning.retry_at_s:
                continue
            probation = learning.probation
            if probation is not None and probation.full:
                ts, values = probation.rows()
                route = learning.route
                job = LearnJob(stream, learning.model, str(route.route.learned_registry), route.config, ts, values,
                               probation.channels, route.note, route.init_bundle)  # fmt: skip
                learning.training = self._hand(job)
                pending += 1
                log.info("stream %s: training its own model on %d samples", stream, len(ts))
            elif (
                learning.state == "scoring"
                and retraining < most
                and (reservoir := learning.reservoir) is not None
                and reservoir.count >= reservoir.limit
                # What retrain_trigger reads, checked inline first: this runs for every stream several times a poll.
                and (
                    reservoir.sustained
                    or learning.drift_from is not None
                    or (age_s and wall - learning.model_time_s >= age_s)
                )
            ):
                assert self._retrain is not None  # scoring streams have reservoirs only with retraining on
                why = retrain_trigger(reservoir, self._retrain, drift_from=learning.drift_from,
                                      model_age_s=wall - learning.model_time_s)  # fmt: skip
                if why == "schedule":
                    scheduled.append((stream, learning))
                elif why is not None:
                    self._submit_retraining(stream, learning, why)
                    pending, retraining = pending + 1, retraining + 1
        scheduled.sort(key=lambda item: item[1].model_time_s)  # the oldest models first: none waits for ever
        for stream, learning in scheduled[: max(0, min(most - retraining, self._cfg.max_pending_trainings - pending))]:
            self._submit_retraining(stream, learning, "schedule")

    def _submit_retraining(self, stream: str, learning: StreamLearning, why: Trigger) -> None:
        """A candidate for `stream`, trained on its reservoir but the newest `holdback_samples` rows (the fault
        check's), with production as its parent."""
        assert learning.reservoir is not None
        assert self._retrain is not None
        cfg, reservoir = self._retrain, learning.reservoir
        ts, values = reservoir.rows()
        cut = len(ts) - cfg.holdback_samples
        route = learning.route
        job = LearnJob(stream, learning.model, str(route.route.learned_registry), route.config, ts[:cut], values[:cut],
                       reservoir.channels, f"{route.note}; retrained for: {why}", route.init_bundle,
                       parent=learning.version, holdback_ts=ts[cut:], holdback=values[cut:],
                       fault_offset_sd=cfg.fault_offset_sd)  # fmt: skip
        learning.training = self._hand(job)
        learning.state, learning.parent, learning.drift_from = "retraining", learning.version, None
        if why == "alert share":
            cause = f"{100 * reservoir.share:.0f} % of its last {cfg.lookback_windows} windows anomalous"
        elif why == "drift":
            cause = "its model's drift watch fired"
        else:
            age_h = (self._wall_clock() - learning.model_time_s) / 3600
            cause = f"its model is {age_h:.1f} h old (max_model_age_s = {cfg.max_model_age_s:.0f})"
        log.info("stream %s: %s; retraining on %d recent samples", stream, cause, cut)

    def _hand(self, job: LearnJob) -> Future[Learned]:
        try:
            return self._executor.submit(self._trainer, job)
        except BrokenExecutor:  # its worker process died (killed, out of memory): start another
            log.error("the trainer's worker died; starting a new one")
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            return self._executor.submit(self._trainer, job)

    def _finish(self, stream: str, learning: StreamLearning, done: Future[Learned]) -> None:
        learning.training = None
        if learning.state == "retraining":
            self._finish_candidate(stream, learning, done)
            return
        try:
            learned = done.result()
            bundle = load_bundle(Path(learned.bundle_path), backend=self._backend, threads=self._threads)
        except Exception as exc:  # any failure of a training (in the worker or loading its model) leaves serve running
            learning.failures += 1
            learning.retry_at_s = self._clock() + self._cfg.retry_after_s
            self._metrics.trainings.labels("failed").inc()
            log.error("stream %s: training its own model failed (%d time(s); next try in %.0f s): %s",
                      stream, learning.failures, self._cfg.retry_after_s, exc)  # fmt: skip
            return
        self._score_with(stream, learning, bundle, learned.version)
        learning.state, learning.probation = "scoring", None
        learning.reservoir = self._new_reservoir(learning.route)
        self._metrics.trainings.labels("ok").inc()
        log.info("stream %s: learned model %s version %d registered; scoring with it", stream, learned.model,
                 learned.version)  # fmt: skip

    def _finish_candidate(self, stream: str, learning: StreamLearning, done: Future[Learned]) -> None:
        """A trained candidate goes into shadow; a failed training is counted and the stream scores on, its
        reservoir filling again."""
        try:
            learned = done.result()
            bundle = load_bundle(Path(learned.bundle_path), backend=self._backend, threads=self._threads)
        except Exception as exc:  # as for a first training: serve keeps running
            self._metrics.retrainings.labels("failed").inc()
            learning.state, learning.retry_at_s = "scoring", self._clock() + self._cfg.retry_after_s
            if learning.reservoir is not None:
                learning.reservoir.clear()
            log.error("stream %s: retraining its model failed; it fills its reservoir again (next try in %.0f s at "
                      "the earliest): %s", stream, self._cfg.retry_after_s, exc)  # fmt: skip
            return
        learning.shadow = Shadow(stream, bundle, learned, alerting=self._alerting)
        if learning.version != learning.parent:  # its fault check compared it with a version no longer in production
            self._discard(stream, learning, "production was moved by hand while it trained")
            return
        log.info("stream %s: candidate %s version %d scores in shadow for %d windows", stream, learned.model,
                 learned.version, self._retrain.shadow_windows if self._retrain else 0)  # fmt: skip

    def _decide(self, stream: str, learning: StreamLearning, shadow: Shadow) -> None:
        """Promote the candidate (production moves to it, the stream scores with it from the next batch) or
        discard it, with the shadow period's figures in its provenance either way."""
        reason = shadow_decision(shadow)
        if reason is not None:
            self._discard(stream, learning, reason)
            return
        learned, registry = shadow.learned, Registry(str(learning.route.route.learned_registry))
        registry.add_metrics(learned.model, learned.version, {**shadow.summary(), "shadow_decision": "promoted",
                                                              "fault_check": dict(learned.fault_check)})  # fmt: skip
        summary = shadow.summary()
        mine, theirs = summary["shadow_false_alert_share"], summary["production_false_alert_share"]
        why = f"shadow: false-alert share {mine:.4f} (production {theirs:.4f}) over {shadow.windows} windows"
        registry.promote(learned.model, learned.version, ALIAS, reason=f"{why}; synthetic faults flagged")
        log.info("stream %s: promoted %s version %d (parent %s) after its shadow period: %s", stream, learned.model,
                 learned.version, learning.version, summary)  # fmt: skip
        self._score_with(stream, learning, shadow.candidate, learned.version)
        learning.shadow, learning.state = None, "scoring"
        if learning.reservoir is not None:
            learning.reservoir.clear()
        self._metrics.retrainings.labels("promoted").inc()

    def _discard(self, stream: str, learning: StreamLearning, reason: str) -> None:
        shadow = learning.shadow
        assert shadow is not None
        learned = shadow.learned
        try:
            Registry(str(learning.route.route.learned_registry)).add_metrics(learned.model, learned.version, {
                **shadow.summary(), "shadow_decision": f"discarded: {reason}",
                "fault_check": dict(learned.fault_check)})  # fmt: skip
        except RegistryError as exc:
            log.warning("stream %s: could not record the shadow period of version %d: %s", stream, learned.version,
                        exc)  # fmt: skip
        log.warning("stream %s: candidate %s version %d discarded: %s", stream, learned.model, learned.version, reason)
        learning.shadow, learning.state = None, "scoring"
        learning.model_time_s = self._model_time(learning)  # the candidate tried: the schedule waits a period
        if learning.reservoir is not None:
            learning.reservoir.clear()
        self._metrics.retrainings.labels("discarded").inc()

    def _new_reservoir(self, route: LearnRoute) -> Reservoir | None:
        return None if self._retrain is None else Reservoir(self._retrain, route.channels)

    def _publish(self) -> None:
        for state, count in self.counts().items():
            self._metrics.learning_streams.labels(state).set(count)


def learn_routes(
    config: Config, routes: Sequence[tuple[RouteConfig, str]], bundles: Mapping[str, Bundle], trainer: Trainer
) -> list[tuple[RouteConfig, LearnRoute | None]]:
    """Each route with its resolved learning settings (None for a route that does not learn); ConfigError naming
    the route when its settings cannot train a model: audio features, too few probation samples."""
    out: list[tuple[RouteConfig, LearnRoute | None]] = []
    for i, (route, key) in enumerate(routes):
        if route.learn == "none":
            out.append((route, None))
            continue
        where = f"routes[{i}]"
        bundle = bundles.get(key)
        if route.learn_config is not None:
            settings = load_config(route.learn_config)
            note = f"settings from {route.learn_config}"
        else:
            assert bundle is not None  # RouteConfig: a route without bundle_path has learn_config
            settings = Config(features=bundle.features, model=bundle.model_config, training=bundle.training,
                              calibration=_calibration_settings(bundle))  # fmt: skip
            note = f"settings recorded in bundle {bundle.name} version {bundle.version}"
        if settings.features.kind != "sensor" or (bundle is not None and bundle.features.kind != "sensor"):
            raise ConfigError("per-stream learning supports sensor streams only; audio (logmel) streams are not "
                              "supported yet: use learn = 'none' for this route", key=f"{where}.learn")  # fmt: skip
        channels = settings.features.sensor.channels or (() if bundle is None else bundle.extractor.group_names)
        if not channels:
            raise ConfigError("a learning route without bundle_path needs the channels of its streams: set "
                              "features.sensor.channels in learn_config", key=f"{where}.learn_config")  # fmt: skip
        if bundle is not None and set(channels) != set(bundle.extractor.group_names):
            raise ConfigError(f"the learned models' channels {list(channels)} differ from those of the route's "
                              f"bundle {list(bundle.extractor.group_names)}", key=f"{where}.learn_config")  # fmt: skip
        init = None
        if route.learn_from == "route_bundle" and bundle is not None:
            if settings.features != bundle.features or settings.model != bundle.model_config:
                raise ConfigError("fine-tuning the route's bundle needs its [features] and [model]: leave "
                                  "learn_config unset or give it the bundle's", key=f"{where}.learn_from")  # fmt: skip
            if settings.calibration.folds >= 2:
                raise ConfigError("fine-tuning does not cross-fit: set calibration.folds = 0 in learn_config",
                                  key=f"{where}.learn_from")  # fmt: skip
            init, note = key, f"{note}; fine-tuned from {bundle.name} version {bundle.version}"
        threads = config.learning.torch_threads
        settings = settings.model_copy(update={"training": settings.training.model_copy(update={
            "torch_threads": threads, "device": "cpu"})})  # fmt: skip
        try:
            trainer.check(settings, route.probation_samples)
        except AeMonitorError as exc:
            raise ConfigError(f"{route.probation_samples} samples cannot train a model: {exc}",
                              key=f"{where}.probation_samples") from exc  # fmt: skip
        retrain = config.learning.retrain
        if retrain.enabled:
            _check_retraining(trainer, settings, retrain, where)
        least = _fewest_samples(trainer, settings, route.probation_samples)
        out.append((route, LearnRoute(route, settings, tuple(channels), note, init, least)))
    return out


def _check_retraining(trainer: Trainer, settings: Config, cfg: RetrainConfig, where: str) -> None:
    """ConfigError when a reservoir cannot give a candidate (too few rows to train) or a fault check (fewer
    held-back rows than a window)."""
    rows = cfg.reservoir_samples - cfg.holdback_samples
    try:
        trainer.check(settings, rows)
    except AeMonitorError as exc:
        raise ConfigError(f"reservoir_samples - holdback_samples = {rows} samples cannot train a candidate for "
                          f"{where}: {exc}", key="learning.retrain.reservoir_samples") from exc  # fmt: skip
    window = settings.features.sensor.window_samples
    if cfg.holdback_samples < window:
        raise ConfigError(f"the fault check needs at least one window ({window} samples) of held-back rows for "
                          f"{where}", key="learning.retrain.holdback_samples")  # fmt: skip


def _fewest_samples(trainer: Trainer, settings: Config, most: int) -> int:
    """The fewest rows, up to `most` (which passes), that `trainer.check` accepts (it accepts more rows whenever it
    accepts fewer: the window counts grow with the length)."""
    low, high = 0, most
    while high - low > 1:
        middle = (low + high) // 2
        try:
            trainer.check(settings, middle)
            high = middle
        except AeMonitorError:
            low = middle
    return high


def _calibration_settings(bundle: Bundle) -> CalibrationConfig:
    settings = None if bundle.calibration is None else bundle.calibration.settings
    return CalibrationConfig() if settings is None else CalibrationConfig.model_validate(settings)


def trainer_executor(cfg: LearningConfig) -> Executor:
    """One worker: a spawned process (a fork would copy the Kafka clients' threads and locks) or a thread."""
    if cfg.worker == "thread":
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ae-monitor-learn")
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
