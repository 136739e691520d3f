"""`ae-monitor benchmark skab`: the official SKAB outlier-detection protocol through ae_monitor's own path.

Protocol (../shared/notes/benchmarks.md): each of the 34 labelled files on its own; its first 400 rows train (the
sensor scaling and the autoencoder are fitted on them, the threshold is calibrated on their window scores), every
later row is predicted 0/1; TP, FP, FN, TN are summed over all files. Test-row labels are read only to count.

A row's prediction is the alert state ae_monitor is in once the window ending at that row has been scored:
`AlertPolicy` (k of n, hysteresis, cooldown) fed the file's windows in time order, 1 while an alert fires. That is
what a live stream knows at that moment; windows reach back into the training rows for context, as a stream would.
The same run computes two reference rows: "always alarm" and a per-file 3-component PCA (reconstruction error,
threshold = 0.99 quantile of the training residuals).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.decomposition import PCA

from ae_monitor.alerting import AlertPolicy
from ae_monitor.config import Config, dump_config
from ae_monitor.engine.slots import online_thresholds
from ae_monitor.errors import DataError
from ae_monitor.jobs.data import ScoredSignal, Signal, fit_extractor, load_signals, score_signal, vectors_of
from ae_monitor.jobs.train import calibrate_scored, fit_bundle, scored_for_calibration
from ae_monitor.model.bundle import Bundle, weights_version
from ae_monitor.model.networks import build_model
from ae_monitor.model.training import seed_everything, train_model
from ae_monitor.records import WindowScore
from ae_monitor.scoring import scorer_for
from ae_monitor.sources.files import read_sensor_csv

log = logging.getLogger(__name__)

TRAIN_ROWS = 400
SKAB_FOLDERS = ("valve1", "valve2", "other")
PCA_COMPONENTS = 3
PCA_QUANTILE = 0.99

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# The published leaderboard (F1, FAR %, MAR %), from ../shared/notes/benchmarks.md.
LEADERBOARD: tuple[tuple[str, float, float, float], ...] = (
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T²+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T²", 0.66, 19.21, 42.60),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("MSCRED", 0.36, 49.94, 69.88),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("Isolation forest", 0.29, 2.56, 82.89),
)


@dataclass(frozen=True)
class FileRun:
    """One file's test part: row indices (0-based in the file), scores (NaN before a window), alerts, labels."""

    name: str
    rows: I64
    score: F64
    alert: I64
    label: I64
    threshold: float
    pca_alert: I64
    scored: ScoredSignal


def skab_files(data: str | Path) -> list[Path]:
    """The 34 labelled SKAB files under `data` (valve1/, valve2/, other/), naturally sorted; not anomaly-free/."""
    root = Path(data)
    files = [f for folder in SKAB_FOLDERS for f in sorted((root / folder).glob("*.csv"), key=_natural)]
    if not files:
        raise DataError(f"no SKAB files under {root}: expected {', '.join(f + '/*.csv' for f in SKAB_FOLDERS)}")
    return files


def _natural(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if re.fullmatch(r"\d+", path.stem) else (1 << 30, path.stem)


def counts(alert: npt.NDArray[np.integer], label: npt.NDArray[np.integer]) -> dict[str, int]:
    """TP, FP, FN, TN of point-wise 0/1 predictions."""
    return {
        "tp": int(((alert == 1) & (label == 1)).sum()),
        "fp": int(((alert == 1) & (label == 0)).sum()),
        "fn": int(((alert == 0) & (label == 1)).sum()),
        "tn": int(((alert == 0) & (label == 0)).sum()),
    }


def rates(c: dict[str, int]) -> dict[str, float]:
    """SKAB's F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP), as fractions.

    >>> rates({"tp": 6, "fp": 2, "fn": 2, "tn": 8})
    {'f1': 0.75, 'far': 0.2, 'mar': 0.25}
    """
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    return {
        "f1": tp / (tp + (fn + fp) / 2) if tp + fn + fp else 0.0,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
    }


def _summed(parts: Sequence[dict[str, int]]) -> dict[str, int]:
    return {key: sum(p[key] for p in parts) for key in ("tp", "fp", "fn", "tn")}


def fit_file_bundle(config: Config, train: Signal) -> Bundle:
    """Scaling, autoencoder and threshold fitted on the training rows of one file (nothing else is seen).

    The last `validation_fraction` of the training windows stop training early. The threshold is calibrated on
    every training window's score: 400 rows leave too few windows for a held-out part, which is why
    `calibration.margin` exists. With `calibration.folds` >= 2 the file goes through `train`'s own path instead
    (`fit_bundle`: cross-fitted, out-of-fold calibration over all 400 rows, no margin needed).
    """
    if config.calibration.folds >= 2:
        return fit_bundle(config, [train], name=train.name, progress=False).bundle
    seed_everything(config.training.seed)
    extractor = fit_extractor(config.features, [train])
    x = vectors_of(extractor, [train])
    if len(x) < 4:
        raise DataError(f"{train.name}: {TRAIN_ROWS} training rows hold {len(x)} windows; use shorter windows")
    n_val = int(len(x) * config.training.validation_fraction)
    model = build_model(config.model, extractor.vector_shape)
    x_train, x_val = (x[:-n_val], x[-n_val:]) if n_val else (x, None)
    train_model(model, x_train, x_val, model_cfg=config.model, cfg=config.training, progress=False)
    bundle = Bundle(
        name=train.name, version=weights_version(model), features=config.features, model_config=config.model,
        training=config.training, extractor=extractor, model=model, calibration=None, extra={},
    )  # fmt: skip
    # Scored as `train` scores (aggregation and recent steps are part of the calibration), then calibrated.
    scored = scored_for_calibration(bundle, [train], recent_steps=config.calibration.recent_steps)
    return bundle.with_calibration(*calibrate_scored(bundle, scored, config.calibration))


def alert_states(bundle: Bundle, config: Config, scored: ScoredSignal) -> tuple[F64, I64]:
    """Per row of the file: the score of the window ending there (NaN if none) and 1 while an alert fires."""
    policy = AlertPolicy(
        config.alerting, bundle_name=bundle.name, bundle_version=bundle.version,
        group_names=bundle.extractor.group_names, calibration=bundle.calibration,  # type: ignore[arg-type]
    )  # fmt: skip
    state = policy.new_state()
    online = online_thresholds(bundle, config.calibration)  # the live per-stream thresholds, as serve applies them
    n = len(scored.signal.samples)
    score, alert = np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    for window in scored.windows:
        row = int(window.end) - 1
        live = WindowScore(scored.signal.name, bundle.name, scored.window_time_s(int(window.start)),
                           scored.window_end_s(int(window.end)), window.score, bundle.threshold,
                           window.contributions)  # fmt: skip
        if online is not None:
            live = online(live)
        policy.update(state, live, now_s=live.end_s)
        score[row], alert[row] = window.score, int(state.firing)
    _hold_until_next_window(alert, scored)
    return score, alert


def _hold_until_next_window(alert: I64, scored: ScoredSignal) -> None:
    # With hop > 1 rows between window ends keep the state of the last decision, as a live stream would.
    ends = sorted(int(w.end) - 1 for w in scored.windows)
    for lo, hi in zip(ends, [*ends[1:], len(alert)], strict=True):
        alert[lo:hi] = alert[lo]


def pca_alerts(train: F64, test: F64) -> I64:
    """The PCA reference: standardise on the training rows, 3 components, alarm above q0.99 of training residuals."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z_train, z_test = (train - mean) / std, (test - mean) / std
    pca = PCA(n_components=PCA_COMPONENTS).fit(z_train)

    def residual(z: F64) -> F64:
        return np.asarray(((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(axis=1), dtype=np.float64)

    return (residual(z_test) > np.quantile(residual(z_train), PCA_QUANTILE)).astype(np.int64)


def _all_channels(config: Config, path: Path) -> F64:
    # The PCA reference sees every channel of the file, whatever subset the autoencoder is configured with.
    sensor = config.features.sensor.model_copy(update={"channels": ()})
    return np.asarray(read_sensor_csv(path, sensor).values, dtype=np.float64)


def run_file(config: Config, path: Path, root: Path) -> FileRun:
    """Train on the first 400 rows of one file, then predict every later row."""
    signal = load_signals([path], config.features)[0]
    name = path.relative_to(root).as_posix()
    signal = Signal(name, signal.samples, signal.ts_s, signal.channels, signal.row_labels)
    if signal.row_labels is None or len(signal.samples) <= TRAIN_ROWS:
        raise DataError(f"{name}: needs an `anomaly` column and more than {TRAIN_ROWS} rows")
    train = Signal(name, signal.samples[:TRAIN_ROWS], signal.ts_s[:TRAIN_ROWS], signal.channels)
    bundle = fit_file_bundle(config, train)
    scored = score_signal(bundle, scorer_for(bundle), signal)
    score, alert = alert_states(bundle, config, scored)
    raw = _all_channels(config, path)
    test = slice(TRAIN_ROWS, None)
    return FileRun(
        name=name, rows=np.arange(len(score))[test], score=score[test], alert=alert[test],
        label=signal.row_labels[test], threshold=bundle.threshold,
        pca_alert=pca_alerts(raw[:TRAIN_ROWS], raw[test]), scored=scored,
    )  # fmt: skip


def run_skab(config: Config, data: str | Path, out: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Run the protocol on every SKAB file under `data`, write the results to `out`, and return results.json."""
    started = time.perf_counter()
    torch.set_num_threads(config.training.torch_threads)
    root, target = Path(data), Path(out)
    target.mkdir(parents=True, exist_ok=True)
    runs = []
    for path in skab_files(root):
        runs.append(run_file(config, path, root))
        log.info("%s: %s", runs[-1].name, counts(runs[-1].alert, runs[-1].label))
    results = _results(config, runs, time.perf_counter() - started)
    _write_predictions(target / "predictions.csv", runs)
    (target / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (target / "results.md").write_text(results_markdown(results), encoding="utf-8")
    if plots:
        from ae_monitor.jobs import plots as plotting  # matplotlib only when plotting

        for run in runs:
            plotting.benchmark_timeline(target / "timelines" / f"{run.name[:-4]}.png", run.scored, run.threshold,
                                        run.rows, run.alert)  # fmt: skip
        plotting.leaderboard(target / "leaderboard.png", leaderboard_rows(results))
    return results


def _results(config: Config, runs: Sequence[FileRun], seconds: float) -> dict[str, Any]:
    files = {r.name: {**counts(r.alert, r.label), "threshold": r.threshold} for r in runs}
    ours = _summed([counts(r.alert, r.label) for r in runs])
    always = _summed([counts(np.ones_like(r.label), r.label) for r in runs])
    pca = _summed([counts(r.pca_alert, r.label) for r in runs])
    return {
        "protocol": f"SKAB outlier detection: per file, train on rows 0-{TRAIN_ROWS - 1}, predict every later row",
        "n_files": len(runs),
        **rates(ours),
        "counts": ours,
        "baselines": {
            "always_alarm": {**rates(always), "counts": always},
            "pca": {**rates(pca), "counts": pca},
        },
        "files": files,
        "seconds": round(seconds, 1),
        "config": dump_config(config),
    }


def _write_predictions(path: Path, runs: Sequence[FileRun]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "row", "score", "alert"])
        for run in runs:
            for row, score, alert in zip(run.rows, run.score, run.alert, strict=True):
                writer.writerow([run.name, int(row), "" if np.isnan(score) else f"{score:.6g}", int(alert)])


def leaderboard_rows(results: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """The published table plus this run's three rows, as (name, F1, FAR %, MAR %), sorted by F1 descending."""
    measured = [
        ("ae_monitor (this run)", results),
        ("always alarm (this run)", results["baselines"]["always_alarm"]),
        ("PCA, 3 components, q0.99 (this run)", results["baselines"]["pca"]),
    ]
    rows = [*LEADERBOARD, *((name, r["f1"], 100 * r["far"], 100 * r["mar"]) for name, r in measured)]
    return sorted(rows, key=lambda row: -row[1])


def results_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# SKAB outlier detection",
        "",
        f"{results['protocol']}; TP/FP/FN/TN summed over {results['n_files']} files. Rows marked *this run* were "
        "computed by this benchmark; the others are the published leaderboard.",
        "",
        "| algorithm | F1 | FAR % | MAR % |",
        "|---|---|---|---|",
    ]
    for name, f1, far, mar in leaderboard_rows(results):
        bold = "**" if name.startswith("ae_monitor") else ""
        lines.append(f"| {bold}{name}{bold} | {f1:.3f} | {far:.2f} | {mar:.2f} |")
    c = results["counts"]
    lines += ["", f"ae_monitor counts: TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, TN {c['tn']}; "
              f"{results['seconds']} s.", ""]  # fmt: skip
    return "\n".join(lines)
