"""`ae-monitor train` and `ae-monitor calibrate`: fit a bundle on normal data and set its threshold."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ae_monitor.band_statistic import BandMeanZ, band_means_of, fit_band_mean_z
from ae_monitor.config import CalibrationConfig, Config
from ae_monitor.errors import ConfigError, DataError
from ae_monitor.jobs.data import (
    ScoredSignal,
    Signal,
    fit_extractor,
    load_signals,
    score_signal,
    split_signals,
    vectors_of,
)
from ae_monitor.model.bundle import Bundle, load_bundle, save_bundle, weights_version
from ae_monitor.model.linear import LinearMonitor
from ae_monitor.model.networks import build_model
from ae_monitor.model.training import TrainResult, seed_everything, train_model
from ae_monitor.scoring import (
    VectorScores,
    aggregate,
    group_scale_of,
    group_scores,
    scorer_for,
    window_hop_s,
    window_plan,
)
from ae_monitor.threshold import Calibration, calibrate, min_calibration_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    bundle: Bundle
    path: Path
    result: TrainResult
    n_train_vectors: int
    n_validation_vectors: int


@dataclass(frozen=True)
class FitReport:
    """A calibrated bundle fitted in memory, and how its training went."""

    bundle: Bundle
    result: TrainResult
    n_train_vectors: int
    n_validation_vectors: int
    # The normal signals the calibration was fitted on, as scored before it (out-of-fold with `folds`): audits and
    # the benchmark's offline comparisons of operating points use them.
    calibration_scored: tuple[ScoredSignal, ...] = ()


def train_bundle(
    config: Config,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    rows: slice | None = None,
    name: str | None = None,
    progress: bool | None = None,
) -> TrainReport:
    """Train on the normal data under `data`, calibrate on a held-out normal split, and write the bundle to `out`."""
    signals = load_signals(data, config.features, rows=rows)
    fit = fit_bundle(config, signals, name=name or Path(out).name, progress=progress)
    return TrainReport(fit.bundle, save_bundle(fit.bundle, out), fit.result, fit.n_train_vectors,
                       fit.n_validation_vectors)  # fmt: skip


def fit_bundle(config: Config, signals: Sequence[Signal], *, name: str, progress: bool | None = None,
               init: Mapping[str, Any] | None = None) -> FitReport:  # fmt: skip
    """What `train` does, in memory: fit the features and the network on normal `signals`, then calibrate. `init`:
    a network state of the same architecture to start from (fine-tuning; not with cross-fitting).

    With `calibration.folds` = k >= 2 the calibration scores are out-of-fold: each signal is cut into k contiguous
    blocks, k networks are each trained without one block and score it, and the bundle's own network is trained on
    everything. Otherwise the last `training.calibration_fraction` of the data is held out and calibrates.
    """
    if config.calibration.folds >= 2:
        if init is not None:
            raise ConfigError("fine-tuning does not cross-fit: set it to 0", key="calibration.folds")
        return _fit_cross_fitted(config, signals, name=name, progress=progress)
    train, validation, calibration = split_signals(
        signals,
        validation_fraction=config.training.validation_fraction,
        calibration_fraction=config.training.calibration_fraction,
    )
    check_split_sizes(config, signals, train, calibration or validation)
    fit = _fit_network(config, train, validation, name=name, progress=progress, init=init)
    on = signals if config.calibration.calibrate_on == "all" else (calibration or validation)
    scored = scored_for_calibration(fit.bundle, on, recent_steps=config.calibration.recent_steps)
    statistic_on = _window_statistic_data(config, fit.bundle, signals, on)
    bundle = fit.bundle.with_calibration(
        *calibrate_scored(fit.bundle, scored, config.calibration, statistic_on=statistic_on)
    )
    bundle = replace(bundle, extra={**bundle.extra, "training_files": [s.name for s in signals]})
    return replace(fit, bundle=bundle, calibration_scored=tuple(scored))


def check_split_sizes(
    config: Config, signals: Sequence[Signal], train: Sequence[Signal], calibration: Sequence[Signal]
) -> None:
    """Stop before any epoch when the training part holds no window or the calibration gets fewer window scores than
    its method needs (2; peaks-over-threshold: enough for its peaks), naming how long each file must be. Counts come
    from the lengths alone (no features)."""
    short = _shortfalls(config, signals, train, calibration)
    if not short:
        return
    part, got, need = short[0]
    audio = config.features.kind == "logmel"
    rate = config.features.logmel.sample_rate_hz if audio else 1

    def amount(n: int) -> str:
        return f"{math.ceil(n / rate * 10) / 10:.1f} s" if audio else f"{n} rows"  # rounded up: enough

    enough = _shortest_sufficient_length(config, len(signals))
    longest = amount(max(len(s.samples) for s in signals))
    what = "of audio " if audio else ""
    remedy = [] if enough is None else [f"supply at least {amount(enough)} {what}per file (the longest has {longest})"]
    remedy += ["raise training.calibration_fraction"] if part == "calibration" else []
    remedy += ["lower calibration.pot_initial_quantile"] if part == "calibration" and need > 2 else []
    raise DataError(
        f"the normal data is too short: its {part} part gives {got} window(s) before training, {need} needed; "
        + " or ".join(remedy)
    )


def _shortfalls(config: Config, signals: Sequence[Signal], train: Sequence[Signal],
                calibration: Sequence[Signal]) -> list[tuple[str, int, int]]:  # fmt: skip
    """(part, windows it gives, windows needed) for each part that is too short, training first."""
    parts = [("training", train, 1), ("calibration", calibration, min_calibration_scores(config.calibration))]
    if config.calibration.calibrate_on == "all":
        # Every normal window is scored for the threshold; the held-out part still needs its 2.
        parts[1:] = [("calibration", signals, parts[1][2]), ("calibration", calibration, 2)]
    return [(part, got, need) for part, chunk, need in parts if (got := _windows_in(config, chunk)) < need]


def _windows_in(config: Config, signals: Sequence[Signal]) -> int:
    """Window scores the calibration gets from `signals` (a window at every vector; a shorter signal makes one)."""
    size, _hop = window_plan(config.features)
    total = 0
    for signal in signals:
        vectors = _vectors_in(config, len(signal.samples))
        total += vectors - size + 1 if vectors >= size else int(vectors > 0)
    return total


def _vectors_in(config: Config, n: int) -> int:
    """Feature vectors the extractor makes from `n` samples (tests/test_first_hour.py checks it against it)."""
    if config.features.kind == "sensor":
        sensor = config.features.sensor
        need = sensor.window_samples + int(sensor.differences)
        return (n - need) // sensor.hop_samples + 1 if n >= need else 0
    logmel = config.features.logmel  # centred STFT frames: 1 + n // hop, stacked `frames` at a time
    return max(0, 1 + n // logmel.hop_length - (logmel.frames - 1)) if n > 0 else 0


def _shortest_sufficient_length(config: Config, n_files: int) -> int | None:
    """The fewest samples per file (all files that long) for which the split passes `check_split_sizes`; None when
    no length does (a split that leaves no calibration data)."""

    def passes(n: int) -> bool:
        # Stand-ins of n samples that take no memory, split by the very code training uses.
        blank = np.broadcast_to(np.float64(0), (n,))
        stand_ins = [Signal(f"{i}", blank, blank, ()) for i in range(n_files)]
        train, validation, calibration = split_signals(
            stand_ins,
            validation_fraction=config.training.validation_fraction,
            calibration_fraction=config.training.calibration_fraction,
        )
        return not _shortfalls(config, stand_ins, train, calibration or validation)

    low, high = 0, 1
    while not passes(high):
        if high > 2**40:
            return None
        low, high = high, high * 2
    while high - low > 1:  # the window counts grow with the length: bisect
        middle = (low + high) // 2
        low, high = (low, middle) if passes(middle) else (middle, high)
    return high


def _fit_network(config: Config, train: Sequence[Signal], validation: Sequence[Signal], *, name: str,
                 progress: bool | None, init: Mapping[str, Any] | None = None) -> FitReport:  # fmt: skip
    """Scaling and network fitted on `train` (early stopping on `validation`); the bundle is not calibrated yet."""
    seed_everything(config.training.seed)
    extractor = fit_extractor(config.features, train)
    x_train, x_val = vectors_of(extractor, train), vectors_of(extractor, validation)
    if len(x_train) == 0:
        raise DataError("the training split holds no complete window; supply more data or shorter windows")
    log.info("training on %d vectors, validating on %d", len(x_train), len(x_val))
    model = build_model(config.model, extractor.vector_shape)
    if init is not None:
        model.load_state_dict(init)
    result = train_model(model, x_train, x_val, model_cfg=config.model, cfg=config.training, progress=progress)
    bundle = Bundle(
        name=name,
        version=weights_version(model),
        features=config.features,
        model_config=config.model,
        training=config.training,
        extractor=extractor,
        model=model,
        calibration=None,
        extra={"training_result": _result_summary(result)},
    )
    return FitReport(bundle, result, len(x_train), len(x_val))


def _fit_cross_fitted(config: Config, signals: Sequence[Signal], *, name: str, progress: bool | None) -> FitReport:
    k, v = config.calibration.folds, config.training.validation_fraction
    min_rows = _rows_per_window(config)
    out_of_fold: list[ScoredSignal] = []
    for fold in range(k):
        train_parts, held_out = fold_split(signals, fold, k, min_rows=min_rows)
        if not held_out or not train_parts:
            continue
        train, validation, _ = split_signals(train_parts, validation_fraction=v, calibration_fraction=0.0)
        if not vectors_of(fit_extractor(config.features, train), train).size:
            continue
        fold_fit = _fit_network(config, train, validation, name=f"{name}-fold{fold}", progress=False)
        out_of_fold += scored_for_calibration(fold_fit.bundle, held_out, recent_steps=config.calibration.recent_steps)
    train, validation, _ = split_signals(signals, validation_fraction=v, calibration_fraction=0.0)
    fit = _fit_network(config, train, validation, name=name, progress=progress)
    notes: tuple[str, ...] = ()
    if sum(len(s.windows) for s in out_of_fold) < 2:
        notes = (
            f"the normal data is too short for {k}-fold cross-fitting with {min_rows}-row windows; calibrated on "
            "the training windows themselves, whose scores run lower than new data's: expect more false alerts",
        )
        log.warning("calibration: %s", notes[0])
        out_of_fold = scored_for_calibration(fit.bundle, signals, recent_steps=config.calibration.recent_steps)
    calibration, scores = calibrate_scored(fit.bundle, out_of_fold, config.calibration)
    calibration = replace(calibration, notes=notes + calibration.notes)
    bundle = fit.bundle.with_calibration(calibration, scores)
    extra = {**bundle.extra, "training_files": [s.name for s in signals], "calibration_folds": k}
    return replace(fit, bundle=replace(bundle, extra=extra), calibration_scored=tuple(out_of_fold))


def fold_split(
    signals: Sequence[Signal], fold: int, folds: int, *, min_rows: int = 1
) -> tuple[list[Signal], list[Signal]]:
    """Blocked k-fold: block `fold` of `folds` contiguous blocks of every signal is held out; the rows before and
    after it train (as separate pieces, so no window straddles the held-out block). Pieces shorter than `min_rows`
    are dropped."""
    train: list[Signal] = []
    held_out: list[Signal] = []
    for signal in signals:
        n = len(signal.samples)
        lo, hi = n * fold // folds, n * (fold + 1) // folds
        for part, a, b in ((train, 0, lo), (held_out, lo, hi), (train, hi, n)):
            if b - a >= min_rows:
                part.append(_cut(signal, a, b))
    return train, held_out


def _cut(signal: Signal, lo: int, hi: int) -> Signal:
    labels = None if signal.row_labels is None else signal.row_labels[lo:hi]
    return Signal(signal.name, signal.samples[lo:hi], signal.ts_s[lo:hi], signal.channels, labels, signal.clip_label)


def _rows_per_window(config: Config) -> int:
    if config.features.kind == "sensor":
        return config.features.sensor.window_samples + int(config.features.sensor.differences)
    logmel = config.features.logmel
    return logmel.n_fft + (logmel.frames - 1) * logmel.hop_length


def scored_for_calibration(bundle: Bundle, signals: Sequence[Signal], *, recent_steps: int) -> list[ScoredSignal]:
    """Every window of `signals` scored as calibration needs them (a window at every vector, the newest
    `recent_steps` steps), before the bundle has a calibration of its own."""
    if recent_steps > bundle.extractor.vector_shape[0]:
        raise ConfigError(
            f"must not exceed the {bundle.extractor.vector_shape[0]} time steps of a feature vector",
            key="calibration.recent_steps",
        )
    scorer = scorer_for(bundle, recent_steps=recent_steps)
    return [score_signal(bundle, scorer, s, every_vector=True) for s in signals]


def _window_statistic_data(
    config: Config, bundle: Bundle, signals: Sequence[Signal], on: Sequence[Signal]
) -> list[ScoredSignal] | None:
    """Every normal signal, scored, when the window statistic is to be fitted on more than the calibration windows:
    the held-out tail can be shorter than one window per file (6 s of audio: 0.6 s), and band levels fitted on a
    handful of windows put new normal windows far outside them (MIMII slider, issue 15's check: 0.94 window AUC)."""
    if config.calibration.window_statistic == "none" or on is signals:
        return None
    return scored_for_calibration(bundle, signals, recent_steps=config.calibration.recent_steps)


def calibrate_scored(
    bundle: Bundle,
    scored: Sequence[ScoredSignal],
    cfg: CalibrationConfig,
    *,
    statistic_on: Sequence[ScoredSignal] | None = None,
) -> tuple[Calibration, npt.NDArray[np.float64]]:
    """Calibrate on signals scored by an uncalibrated (mean-error) scorer: with `cfg.aggregation` "max" the group
    scales come from these normal errors first, and the window scores are re-formed with them. A window statistic
    is fitted on `statistic_on` (default: `scored`), then the window scores are formed with it."""
    steps = cfg.recent_steps or bundle.extractor.vector_shape[0]
    scale = None
    if cfg.aggregation == "max":
        groups = np.concatenate([s.scores.group_errors for s in scored])
        scale = group_scale_of(groups, steps, quantile=cfg.group_scale_quantile)
    linear, linear_scores, notes = fit_linear_monitor(bundle, scored, cfg)
    size, _hop = window_plan(bundle.features)
    vectors = _formed(scored, steps, scale)
    if linear is not None:
        vectors = [VectorScores(np.maximum(v.errors, lin), v.group_errors) for v, lin in zip(vectors, linear_scores,
                                                                                            strict=True)]  # fmt: skip
    statistic = None
    if cfg.window_statistic != "none":
        on = scored if statistic_on is None else statistic_on
        statistic = _fit_window_statistic(bundle, on, _formed(on, steps, scale), cfg)
        shape = bundle.extractor.vector_shape
        vectors = [v.with_statistic(statistic, s.vectors.data, shape) for v, s in zip(vectors, scored, strict=True)]
    scores = []
    for s, v in zip(scored, vectors, strict=True):
        scores += [w.score for w in aggregate(v, s.vectors.first_sample, s.vectors.end_sample, size=size, hop=1)]
    x = np.asarray(scores, dtype=np.float64)
    calibration = _calibrated(bundle, x, cfg)
    return replace(calibration, aggregation=cfg.aggregation, group_scale=scale, recent_steps=cfg.recent_steps,
                   window_statistic=None if statistic is None else statistic.to_dict(),
                   linear=None if linear is None else linear.to_dict(), notes=calibration.notes + notes), x  # fmt: skip


def _formed(scored: Sequence[ScoredSignal], steps: int, scale: tuple[float, ...] | None) -> list[VectorScores]:
    """The vector scores of `scored` with the calibration's group scales, if any (aggregation "max")."""
    return [VectorScores(s.scores.errors if scale is None else group_scores(s.scores.group_errors, steps, scale),
                         s.scores.group_errors) for s in scored]  # fmt: skip


def _fit_window_statistic(bundle: Bundle, scored: Sequence[ScoredSignal], vectors: list[VectorScores],
                          cfg: CalibrationConfig) -> BandMeanZ:  # fmt: skip
    """The window statistic fitted on the windows (at every vector) of normal `scored` signals."""
    size, _hop = window_plan(bundle.features)
    if size == 1:
        raise ConfigError("needs windows of several vectors (audio features); a sensor vector is its own window",
                          key="calibration.window_statistic")  # fmt: skip
    shape = bundle.extractor.vector_shape
    means = [band_means_of(s.vectors.data, shape) for s in scored]
    return fit_band_mean_z([(v.errors, m) for v, m in zip(vectors, means, strict=True)], size=size,
                           quantile=cfg.window_statistic_quantile, margin=cfg.window_statistic_margin)  # fmt: skip


def fit_linear_monitor(
    bundle: Bundle, scored: Sequence[ScoredSignal], cfg: CalibrationConfig
) -> tuple[LinearMonitor | None, list[npt.NDArray[np.float64]], tuple[str, ...]]:
    """The calibrated linear monitor `cfg` asks for, fitted on the normal feature rows of `scored`, and its score of
    each of their vectors (one array per signal); None (with a note where that helps) where it cannot apply."""
    if not cfg.linear_components:
        return None, [], ()
    t, g = bundle.extractor.vector_shape
    if bundle.features.kind != "sensor":
        notes = ("calibration.linear_components ignored: the linear monitor is for sensor channels, not audio",)
        return None, [], notes
    if g < 2:
        return None, [], ()  # one channel has no correlations to watch: one sensor config serves both (documented)
    # In `bundle`'s own feature units: out-of-fold vectors were scaled by their fold's extractor.
    data = [bundle.extractor.transform(s.signal.samples).data for s in scored]
    # Each vector's newest step: every normal sample once (hop 1), without holding T copies of the data.
    rows = np.concatenate([np.asarray(d).reshape(-1, t, g)[:, -1, :] for d in data])
    monitor = LinearMonitor.fit(rows, components=cfg.linear_components, terms=cfg.linear_terms)
    first_step = t - (cfg.recent_steps or t)
    terms = [monitor.vector_terms(d, (t, g), first_step) for d in data]
    monitor = monitor.calibrated(np.concatenate(terms), quantile=cfg.group_scale_quantile)
    return monitor, [monitor.scaled_max(x) for x in terms], ()


def _calibrated(bundle: Bundle, scores: npt.NDArray[np.float64], cfg: CalibrationConfig) -> Calibration:
    if len(scores) < 2:
        raise DataError(
            f"the calibration data gives {len(scores)} window(s); supply more normal data "
            "or raise training.calibration_fraction"
        )
    log.info("calibrating with %s on %d window scores", cfg.method, len(scores))
    return calibrate(scores, cfg, window_hop_s=window_hop_s(bundle.features))


def calibrate_on(bundle: Bundle, signals: Sequence[Signal], cfg: CalibrationConfig) -> Calibration:
    """Calibrate `bundle`'s threshold on the window scores of the normal `signals`."""
    return calibrate_scores(bundle, signals, cfg)[0]


def calibrate_scores(
    bundle: Bundle, signals: Sequence[Signal], cfg: CalibrationConfig
) -> tuple[Calibration, npt.NDArray[np.float64]]:
    """The calibration and the window scores it was fitted on (kept in the bundle for live thresholds)."""
    scores = window_scores(bundle, signals)
    calibration = _calibrated(bundle, scores, cfg)
    if bundle.calibration is not None:
        # The scores were formed with the bundle's aggregation and group scales: the threshold is in those units.
        old = bundle.calibration
        calibration = replace(
            calibration, aggregation=old.aggregation, group_scale=old.group_scale, recent_steps=old.recent_steps,
            window_statistic=old.window_statistic, linear=old.linear,
        )  # fmt: skip
    return calibration, scores


def window_scores(bundle: Bundle, signals: Sequence[Signal]) -> npt.NDArray[np.float64]:
    scorer = scorer_for(bundle)
    per_signal = [[w.score for w in score_signal(bundle, scorer, s, every_vector=True).windows] for s in signals]
    return np.asarray([score for scores in per_signal for score in scores], dtype=np.float64)


def calibrate_bundle(
    path: str | Path, data: Sequence[str | Path], cfg: CalibrationConfig | None = None, *, rows: slice | None = None
) -> Calibration:
    """`ae-monitor calibrate`: recalibrate the bundle at `path` on normal data and rewrite it in place.

    Without `cfg` the bundle's own calibration settings are reused (library defaults, with a warning, for a bundle
    that does not record them). The data should be normal data the network was not trained on.
    """
    bundle = load_bundle(path)
    cfg = cfg or bundle_calibration_settings(bundle)
    calibration, scores = calibrate_scores(bundle, load_signals(data, bundle.features, rows=rows), cfg)
    save_bundle(bundle.with_calibration(calibration, scores), path)
    return calibration


def bundle_calibration_settings(bundle: Bundle) -> CalibrationConfig:
    """The [calibration] settings `bundle` was calibrated with; library defaults (with a warning) when unrecorded."""
    settings = None if bundle.calibration is None else bundle.calibration.settings
    if settings is None:
        log.warning(
            "the bundle does not record its calibration settings (made before they were kept); using the library "
            "defaults (method %s): pass --config to choose",
            CalibrationConfig().method,
        )
        return CalibrationConfig()
    return CalibrationConfig.model_validate(settings)


def _result_summary(result: TrainResult) -> dict[str, float | int | bool]:
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
    }
