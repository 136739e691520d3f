"""The trainer of per-stream learning (serve/learning.py): fit and calibrate a stream's model on its probation rows
as `train` would on a file, then register it in the route's folder registry under `production`. A retraining job
(one with `parent`) registers a candidate under `candidate` instead, and runs the fault check its promotion needs.

Runs in serve's trainer worker (a spawned process by default); it is handed plain data and returns plain data.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ae_monitor.config import Config
from ae_monitor.jobs.data import Signal, score_signal, split_signals
from ae_monitor.jobs.train import check_split_sizes, fit_bundle
from ae_monitor.model.bundle import Bundle, load_bundle, save_bundle
from ae_monitor.registry import AliasRef, Registry
from ae_monitor.scoring import scorer_for
from ae_monitor.serve.learning import ALIAS, CANDIDATE, F64, Learned, LearnJob

log = logging.getLogger(__name__)


class StreamTrainer:
    """`check` at startup, then one call per stream (picklable: it crosses to the worker process by name)."""

    def check(self, config: Config, samples: int) -> None:
        """DataError when `samples` rows of one stream give too few windows to train and calibrate on."""
        if config.calibration.folds >= 2:
            return  # cross-fitting falls back to in-sample calibration on short data (with a note) instead of failing
        blank = np.broadcast_to(np.float64(0), (samples,))  # the split reads lengths only
        signals = [Signal("probation", blank, blank, ())]
        train, validation, calibration = split_signals(
            signals,
            validation_fraction=config.training.validation_fraction,
            calibration_fraction=config.training.calibration_fraction,
        )
        check_split_sizes(config, signals, train, calibration or validation)

    def __call__(self, job: LearnJob) -> Learned:
        signal = Signal(f"stream {job.stream}", job.values, job.ts_s, job.channels)
        init = None
        if job.init_bundle is not None:  # the route's bundle now (an alias may have moved since startup)
            alias = AliasRef.parse(job.init_bundle)
            base = load_bundle(Path(job.init_bundle) if alias is None else alias.resolve())
            init = base.network.state_dict()
        fit = fit_bundle(job.config, [signal], name=job.model, progress=False, init=init)
        registry = Registry(job.registry_root)
        first, last = (_iso(float(t)) for t in (job.ts_s[0], job.ts_s[-1]))
        which = f"its first {len(job.ts_s)} samples" if job.parent is None else (
            f"{len(job.ts_s)} recent samples that did not alert, retraining version {job.parent}")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="ae-monitor-learn-") as staging:
            path = save_bundle(fit.bundle, Path(staging) / "bundle")
            version = registry.register(
                job.model,
                path,
                parent=job.parent,
                data_span=(first, last),
                metrics={"samples": len(job.ts_s), "first_ts_s": float(job.ts_s[0]), "last_ts_s": float(job.ts_s[-1])},
                note=f"learned by serve from stream {job.stream!r}: {which}; {job.note}",
            )
        if job.parent is None:
            registry.promote(job.model, version.number, ALIAS, reason="per-stream learning")
            log.info("stream %s: registered %s version %d", job.stream, job.model, version.number)
            return Learned(job.stream, job.model, version.number, str(version.bundle_path))
        # A candidate: serve scores it in shadow and decides; `production` moves only then.
        registry.promote(job.model, version.number, CANDIDATE, reason="retraining: in shadow")
        production = load_bundle(registry.version(job.model, job.parent).bundle_path)
        checks = fault_check(production, fit.bundle, job.holdback_ts, job.holdback, job.channels, job.fault_offset_sd)
        log.info("stream %s: registered candidate %s version %d", job.stream, job.model, version.number)
        return Learned(job.stream, job.model, version.number, str(version.bundle_path), checks)


def fault_check(
    production: Bundle, candidate: Bundle, ts_s: F64, values: F64, channels: tuple[str, ...], offset_sd: float
) -> dict[str, tuple[float, float]]:
    """Per channel: the shares of the held-back rows' windows that production and the candidate flag (score above
    the calibrated threshold) once that channel alone is offset by `offset_sd` of its standard deviation there."""
    spread = values.std(axis=0)
    checks: dict[str, tuple[float, float]] = {}
    for i, channel in enumerate(channels):
        faulty = values.copy()
        # A flat channel has no spread to scale by: one unit of its reading stands in.
        faulty[:, i] += offset_sd * (float(spread[i]) or 1.0)
        signal = Signal(f"fault on {channel}", faulty, ts_s, channels)
        checks[channel] = (_flagged(production, signal), _flagged(candidate, signal))
    return checks


def _flagged(bundle: Bundle, signal: Signal) -> float:
    windows = score_signal(bundle, scorer_for(bundle), signal).windows
    return sum(w.score > bundle.threshold for w in windows) / len(windows) if windows else 0.0


def _iso(ts_s: float) -> str:
    return datetime.fromtimestamp(ts_s, UTC).isoformat(timespec="seconds")
