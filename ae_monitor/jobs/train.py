"""`ae-monitor train` and `ae-monitor calibrate`: fit a bundle on normal data and set its threshold."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ae_monitor.config import CalibrationConfig, Config
from ae_monitor.errors import DataError
from ae_monitor.jobs.data import Signal, fit_extractor, load_signals, score_signal, split_signals, vectors_of
from ae_monitor.model.bundle import Bundle, load_bundle, save_bundle, weights_version
from ae_monitor.model.networks import build_model
from ae_monitor.model.training import TrainResult, seed_everything, train_model
from ae_monitor.scoring import scorer_for, window_hop_s
from ae_monitor.threshold import Calibration, calibrate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    bundle: Bundle
    path: Path
    result: TrainResult
    n_train_vectors: int
    n_validation_vectors: int


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
    seed_everything(config.training.seed)
    signals = load_signals(data, config.features, rows=rows)
    train, validation, calibration = split_signals(
        signals,
        validation_fraction=config.training.validation_fraction,
        calibration_fraction=config.training.calibration_fraction,
    )
    extractor = fit_extractor(config.features, train)
    x_train, x_val = vectors_of(extractor, train), vectors_of(extractor, validation)
    if len(x_train) == 0:
        raise DataError("the training split holds no complete window; supply more data or shorter windows")
    log.info("training on %d vectors, validating on %d", len(x_train), len(x_val))
    model = build_model(config.model, extractor.vector_shape)
    result = train_model(model, x_train, x_val, model_cfg=config.model, cfg=config.training, progress=progress)
    bundle = Bundle(
        name=name or Path(out).name,
        version=weights_version(model),
        features=config.features,
        model_config=config.model,
        training=config.training,
        extractor=extractor,
        model=model,
        calibration=None,
        extra={"training_result": _result_summary(result), "training_files": [s.name for s in signals]},
    )
    bundle = bundle.with_calibration(*calibrate_scores(bundle, calibration or validation, config.calibration))
    return TrainReport(bundle, save_bundle(bundle, out), result, len(x_train), len(x_val))


def calibrate_on(bundle: Bundle, signals: Sequence[Signal], cfg: CalibrationConfig) -> Calibration:
    """Calibrate `bundle`'s threshold on the window scores of the normal `signals`."""
    return calibrate_scores(bundle, signals, cfg)[0]


def calibrate_scores(
    bundle: Bundle, signals: Sequence[Signal], cfg: CalibrationConfig
) -> tuple[Calibration, npt.NDArray[np.float64]]:
    """The calibration and the window scores it was fitted on (kept in the bundle for live thresholds)."""
    scores = window_scores(bundle, signals)
    if len(scores) < 2:
        raise DataError(
            f"the calibration data gives {len(scores)} window(s); supply more normal data "
            "or raise training.calibration_fraction"
        )
    log.info("calibrating with %s on %d window scores", cfg.method, len(scores))
    return calibrate(scores, cfg, window_hop_s=window_hop_s(bundle.features)), scores


def window_scores(bundle: Bundle, signals: Sequence[Signal]) -> npt.NDArray[np.float64]:
    scorer = scorer_for(bundle)
    per_signal = [[w.score for w in score_signal(bundle, scorer, s, every_vector=True).windows] for s in signals]
    return np.asarray([score for scores in per_signal for score in scores], dtype=np.float64)


def calibrate_bundle(
    path: str | Path, data: Sequence[str | Path], cfg: CalibrationConfig, *, rows: slice | None = None
) -> Calibration:
    """`ae-monitor calibrate`: recalibrate the bundle at `path` on normal data and rewrite it in place."""
    bundle = load_bundle(path)
    calibration, scores = calibrate_scores(bundle, load_signals(data, bundle.features, rows=rows), cfg)
    save_bundle(bundle.with_calibration(calibration, scores), path)
    return calibration


def _result_summary(result: TrainResult) -> dict[str, float | int | bool]:
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
    }
