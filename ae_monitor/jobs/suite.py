"""The detection benchmark: ae_monitor and two baselines on the same splits, each at its own threshold.

Suites (each a list of `Case`s: one normal training part and one or more labelled test parts):
- ``gutentag``: synthetic series generated at run time by timeeval-gutentag from a committed YAML with a fixed seed
  (its `train-no-anomaly` series trains, its `test` series is predicted); split into univariate and multivariate;
- ``skab``: SKAB's outlier protocol (per file, rows 0-399 train, every later row is predicted; windows and the
  rolling history reach back into the training rows, as a live stream's would);
- ``demo``: the demo pumps of `ae-monitor demo` (one healthy training pump, three replayed pumps).

Detectors: ``ae_monitor`` (the product's own train path: `fit_bundle`, then the alert state of the window ending at
each row), ``zscore`` (causal rolling z-score, previous 100 rows, max over channels) and ``pca`` (T² + Q). No
threshold is searched on test labels and no point-adjustment is applied. Metrics per suite, pooled over its test
parts: point-wise precision, recall and F1 (SKAB's F1 = TP / (TP + (FP + FN) / 2), the usual F1), event recall
(share of labelled segments with at least one alert row inside), false alerts per 1,000 normal rows
(1000 × FP / (FP + TN)), the mean per-part ROC AUC of the raw scores, and the mean detection delay in rows from a
segment's first row to its first alert (detected segments only).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.signal import lfilter
from sklearn.metrics import roc_auc_score

from ae_monitor.baselines import PcaT2Q, RollingZScore
from ae_monitor.config import Config, dump_config
from ae_monitor.jobs.benchmark import TRAIN_ROWS, alert_states, skab_files
from ae_monitor.jobs.data import Signal, load_signals, score_signal
from ae_monitor.jobs.train import fit_bundle
from ae_monitor.scoring import out_of_range, scorer_for

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
DETECTORS = ("ae_monitor", "zscore", "pca")
TRACKING_HALFLIFE_ROWS = 100.0  # the z-score baseline's history, as a half-life
# ae_monitor_learned: rows a new stream learns from before it is scored. Every GutenTAG anomaly starts after row 300
# and the demo's first fault at 250 s, so 250 rows of probation hold no labelled anomaly (and are about the least
# that `train`'s split accepts with 20-row windows: its validation and calibration parts need 2 windows each).
PROBATION_ROWS = 250
# SKAB's channels as configs/sensor-skab.toml names them (the thermal channels drift after start-up: docs/skab.md).
SKAB_CHANNELS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Voltage", "Volume Flow RateRMS")


@dataclass(frozen=True)
class Part:
    """One labelled test part. `context` rows precede it in the same recording (SKAB); empty for a new recording."""

    name: str
    values: F64
    label: I64
    context: F64


@dataclass(frozen=True)
class Case:
    name: str
    suite: str
    channels: tuple[str, ...]
    train: F64
    parts: tuple[Part, ...]
    kind: str = ""  # the anomaly kind, where the suite knows it (GutenTAG)


@dataclass(frozen=True)
class Prediction:
    """One detector on one part: per-row score (NaN where it has none) and 0/1 alert."""

    score: F64
    alert: I64


@dataclass
class Outcome:
    case: Case
    predictions: dict[str, list[Prediction]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- cases ---------------------------------------------------------------------------------------------------------


def gutentag_cases(yaml_path: str | Path, *, only: Sequence[str] | None = None) -> list[Case]:
    """The GutenTAG series of `yaml_path` (its top-level `seed` fixes the generator), generated in memory."""
    # The `bench` extra (not in `dev`: see pyproject.toml), imported only when this suite runs.
    yaml = importlib.import_module("yaml")
    gutentag = importlib.import_module("gutenTAG")

    doc = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8"))
    seed = int(doc.pop("seed"))
    if only is not None:
        doc["timeseries"] = [ts for ts in doc["timeseries"] if ts["name"] in set(only)]
    kinds = {ts["name"]: ts["anomalies"][0]["kinds"][0]["kind"] for ts in doc["timeseries"]}
    generated = gutentag.GutenTAG.from_dict(doc, seed=seed).generate(return_timeseries=True) or []
    tables: dict[str, dict[str, Any]] = {}
    for ts in generated:
        tables.setdefault(ts.name, {})[ts.training_type.value] = ts.timeseries
    cases = []
    for name, t in tables.items():
        test, train = t["test"], t["train-no-anomaly"]
        columns = tuple(c for c in test.columns if c.startswith("value"))
        suite = "gutentag-univariate" if len(columns) == 1 else "gutentag-multivariate"
        part = Part(name, test[list(columns)].to_numpy(np.float64), test["is_anomaly"].to_numpy(np.int64),
                    np.zeros((0, len(columns))))  # fmt: skip
        cases.append(Case(name, suite, columns, train[list(columns)].to_numpy(np.float64), (part,), kinds[name]))
    return cases


def skab_cases(config: Config, data: str | Path, *, channels: Sequence[str] = SKAB_CHANNELS) -> list[Case]:
    """Each labelled SKAB file: rows 0-399 train, the rest is one part whose context is the training rows."""
    root = Path(data)
    sensor = config.features.sensor.model_copy(update={"channels": tuple(channels)})
    features = config.features.model_copy(update={"kind": "sensor", "sensor": sensor})
    cases = []
    for path in skab_files(root):
        signal = load_signals([path], features)[0]
        assert signal.row_labels is not None, f"{path} has no anomaly column"
        values = np.asarray(signal.samples, dtype=np.float64)
        name = path.relative_to(root).as_posix()
        part = Part(name, values[TRAIN_ROWS:], signal.row_labels[TRAIN_ROWS:], values[:TRAIN_ROWS])
        cases.append(Case(name, "skab", signal.channels, values[:TRAIN_ROWS], (part,)))
    return cases


def demo_cases(*, seed: int = 7, train_s: int = 5000, replay_s: int = 1000) -> list[Case]:
    """The pumps of `ae-monitor demo` (same generator and seed): one healthy training pump, three replayed ones."""
    from ae_monitor.jobs.demo import CHANNELS, FAULTS, machine

    rng = np.random.default_rng(seed)
    train = machine(train_s, rng)[0]
    parts = []
    for name, fault in FAULTS.items():
        values, labels = machine(replay_s, rng, fault)
        parts.append(Part(name, values, labels, np.zeros((0, len(CHANNELS)))))
    return [Case("demo-pumps", "demo", CHANNELS, train, tuple(parts))]


# --- detectors -----------------------------------------------------------------------------------------------------


def config_for(config: Config, case: Case) -> Config:
    """The one shipped configuration with only the channel names changed for `case`."""
    sensor = config.features.sensor.model_copy(update={"channels": case.channels})
    return config.model_copy(update={"features": config.features.model_copy(update={"sensor": sensor})})


def _signal(name: str, values: F64, channels: tuple[str, ...], period_s: float) -> Signal:
    return Signal(name, values, np.arange(len(values), dtype=np.float64) * period_s, channels)


def run_ae_monitor(config: Config, case: Case, notes: list[str], *, dump: Path | None = None) -> list[Prediction]:
    cfg = config_for(config, case)
    period = cfg.features.sensor.sample_period_s
    fit = fit_bundle(cfg, [_signal(case.name, case.train, case.channels, period)], name=case.name, progress=False)
    bundle = fit.bundle
    notes += [f"{case.name}: {n}" for n in getattr(bundle.calibration, "notes", ())]
    predictions: list[Prediction] = []
    arrays: dict[str, npt.NDArray[Any]] = {}
    for i, part in enumerate(case.parts):
        full = np.concatenate([part.context, part.values])
        scored = score_signal(bundle, scorer_for(bundle), _signal(part.name, full, case.channels, period))
        score, alert = alert_states(bundle, cfg, scored)
        keep = slice(len(part.context), None)
        found = out_of_range(bundle, full[keep])
        if found:
            worst = max(found, key=lambda o: abs(o.z))
            notes.append(f"{part.name}: {len(found)} channel(s) out of range, e.g. {worst.message()}")
        predictions.append(Prediction(score[keep], alert[keep]))
        if dump is not None:
            arrays[f"test{i}_steps"] = _step_errors(bundle, scored)
            arrays[f"test{i}_codes"] = scorer_for(bundle).encode(scored.vectors.data)
        arrays |= {f"test{i}_groups": scored.scores.group_errors, f"test{i}_end": scored.vectors.end_sample,
                   f"test{i}_label": part.label, f"test{i}_context": np.array(len(part.context))}  # fmt: skip
    if dump is not None:
        # Everything needed to compare operating points offline without retraining (scripts/bench_detection.py).
        oof = [s.scores.group_errors for s in fit.calibration_scored]
        train = score_signal(bundle, scorer_for(bundle), _signal(case.name, case.train, case.channels, period))
        arrays |= {"calibration_groups": np.concatenate(oof), "steps": np.array(bundle.extractor.vector_shape[0]),
                   "train_groups": train.scores.group_errors, "train_steps": _step_errors(bundle, train),
                   "train_codes": scorer_for(bundle).encode(train.vectors.data)}  # fmt: skip
        dump.mkdir(parents=True, exist_ok=True)
        savez: Any = np.savez_compressed  # its stubs read **arrays as its own keyword arguments
        savez(dump / f"{case.name.replace('/', '_')}.npz", **arrays)
    return predictions


def _step_errors(bundle: Any, scored: Any) -> npt.NDArray[np.float32]:
    data = scored.vectors.data
    squared = (scorer_for(bundle).reconstruct(data) - data) ** 2
    return np.asarray(squared.reshape(len(data), *bundle.extractor.vector_shape), dtype=np.float32)


def track_levels(values: F64, *, halflife_rows: float = TRACKING_HALFLIFE_ROWS) -> F64:
    """`values` minus a causal, slowly tracking per-channel level: an exponentially weighted mean of the previous
    rows (half-life `halflife_rows`), started at the first row. An experiment for the issue's point 5: a stream that
    settles at a new level stops looking anomalous after a few half-lives, while a fast change still stands out.

    >>> track_levels(np.array([[1.0], [1.0], [5.0], [5.0]]), halflife_rows=1.0)[:, 0].tolist()
    [0.0, 0.0, 4.0, 2.0]
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return x
    alpha = 1.0 - 0.5 ** (1.0 / halflife_rows)
    # level[t] = level[t-1] + alpha * (x[t-1] - level[t-1]), level[0] = x[0]: a first-order filter of x delayed by one.
    delayed = np.concatenate([x[:1], x[:-1]])
    level = lfilter([alpha], [1.0, alpha - 1.0], delayed, axis=0, zi=(1.0 - alpha) * x[:1])[0]
    return np.asarray(x - level, dtype=np.float64)


def run_ae_monitor_tracked(config: Config, case: Case, notes: list[str]) -> list[Prediction]:
    """ae_monitor on level-tracked inputs (`track_levels`), training and test alike; the rest is unchanged."""
    tracked_parts = []
    for part in case.parts:
        full = track_levels(np.concatenate([part.context, part.values]))
        tracked_parts.append(Part(part.name, full[len(part.context) :], part.label, full[: len(part.context)]))
    tracked = Case(case.name, case.suite, case.channels, track_levels(case.train), tuple(tracked_parts), case.kind)
    return run_ae_monitor(config, tracked, [])


def run_ae_monitor_learned(
    config: Config, case: Case, notes: list[str], *, probation_rows: int = PROBATION_ROWS
) -> list[Prediction]:
    """ae_monitor with no offline training (issue 12's per-stream learning): each test stream learns from its own
    first rows (SKAB: the recording's normal rows before the part, its own protocol; otherwise the part's first
    `probation_rows`), calibrates as `train` does, and is scored from there on; probation rows get no alert."""
    cfg = config_for(config, case)
    period = cfg.features.sensor.sample_period_s
    out = []
    for part in case.parts:
        full = np.concatenate([part.context, part.values])
        probation = max(len(part.context), probation_rows)
        fit = fit_bundle(cfg, [_signal(part.name, full[:probation], case.channels, period)], name=case.name,
                         progress=False)  # fmt: skip
        notes += [f"{part.name} (learned): {n}" for n in getattr(fit.bundle.calibration, "notes", ())]
        scored = score_signal(fit.bundle, scorer_for(fit.bundle), _signal(part.name, full, case.channels, period))
        score, alert = alert_states(fit.bundle, cfg, scored)
        alert[:probation] = 0  # a stream on probation is not scored (no route bundle in this mode)
        keep = slice(len(part.context), None)
        out.append(Prediction(score[keep], alert[keep]))
    return out


def run_zscore(case: Case) -> list[Prediction]:
    detector = RollingZScore().fit(case.train)
    out = []
    for part in case.parts:
        full = np.concatenate([part.context, part.values])
        keep = slice(len(part.context), None)
        out.append(Prediction(detector.score(full)[keep], detector.predict(full)[keep]))
    return out


def run_pca(case: Case) -> list[Prediction]:
    detector = PcaT2Q().fit(case.train)
    return [Prediction(detector.score(p.values), detector.predict(p.values)) for p in case.parts]


def run_case(config: Config, case: Case, detectors: Sequence[str] = DETECTORS, *, dump: Path | None = None) -> Outcome:
    outcome = Outcome(case)
    runners: dict[str, Callable[[], list[Prediction]]] = {
        "ae_monitor": lambda: run_ae_monitor(config, case, outcome.notes, dump=dump),
        "ae_monitor_tracked": lambda: run_ae_monitor_tracked(config, case, outcome.notes),
        "ae_monitor_learned": lambda: run_ae_monitor_learned(config, case, outcome.notes),
        "zscore": lambda: run_zscore(case),
        "pca": lambda: run_pca(case),
    }
    for name in detectors:
        started = time.perf_counter()
        outcome.predictions[name] = runners[name]()
        outcome.seconds[name] = time.perf_counter() - started
    return outcome


# --- metrics -------------------------------------------------------------------------------------------------------


def segments(label: npt.NDArray[np.integer]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s.

    >>> segments(np.array([0, 1, 1, 0, 1]))
    [(1, 3), (4, 5)]
    """
    padded = np.concatenate([[0], np.asarray(label, dtype=np.int64), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def part_metrics(pred: Prediction, label: I64) -> dict[str, Any]:
    """Counts, events and AUC of one detector on one part."""
    alert, events = pred.alert, segments(label)
    delays = [int(np.flatnonzero(alert[a:b])[0]) for a, b in events if alert[a:b].any()]
    finite = np.where(
        np.isfinite(pred.score), pred.score, np.nanmin(pred.score) if np.isfinite(pred.score).any() else 0
    )
    auc = float(roc_auc_score(label, finite)) if 0 < label.sum() < len(label) else None
    return {
        "tp": int(((alert == 1) & (label == 1)).sum()),
        "fp": int(((alert == 1) & (label == 0)).sum()),
        "fn": int(((alert == 0) & (label == 1)).sum()),
        "tn": int(((alert == 0) & (label == 0)).sum()),
        "events": len(events),
        "events_detected": len(delays),
        "delays": delays,
        "auc": auc,
    }


def summary(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled figures over parts: precision, recall, F1, event recall, false alerts per 1,000 normal rows, AUC."""
    tp, fp, fn, tn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn", "tn"))
    events, detected = sum(p["events"] for p in parts), sum(p["events_detected"] for p in parts)
    delays = [d for p in parts for d in p["delays"]]
    aucs = [p["auc"] for p in parts if p["auc"] is not None]
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0,
        "event_recall": detected / events if events else 0.0,
        "false_alerts_per_1000": 1000.0 * fp / (fp + tn) if fp + tn else 0.0,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
        "auc": float(np.mean(aucs)) if aucs else None,
        "mean_delay_rows": float(np.mean(delays)) if delays else None,
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "events": events,
        "parts": len(parts),
    }


def _per_part(outcomes: Sequence[Outcome], detector: str) -> Iterator[tuple[Outcome, Part, dict[str, Any]]]:
    for o in outcomes:
        for part, pred in zip(o.case.parts, o.predictions[detector], strict=True):
            yield o, part, part_metrics(pred, part.label)


def results(config: Config, outcomes: Sequence[Outcome], seconds: float, detectors: Sequence[str]) -> dict[str, Any]:
    suites: dict[str, Any] = {}
    kinds: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for suite in dict.fromkeys(o.case.suite for o in outcomes):
        mine = [o for o in outcomes if o.case.suite == suite]
        suites[suite] = {d: summary([m for _, _, m in _per_part(mine, d)]) for d in detectors}
        suites[suite]["cases"] = len(mine)
        suites[suite]["seconds"] = {d: round(sum(o.seconds[d] for o in mine), 1) for d in detectors}
    for kind in sorted({o.case.kind for o in outcomes if o.case.kind}):
        mine = [o for o in outcomes if o.case.kind == kind]
        kinds[kind] = {d: _short(summary([m for _, _, m in _per_part(mine, d)])) for d in detectors}
    for d in detectors:
        for _, part, m in _per_part(outcomes, d):
            files.setdefault(part.name, {})[d] = {k: m[k] for k in ("tp", "fp", "fn", "tn", "auc", "events_detected")}
    return {
        "protocol": __doc__.split("\n\n")[2] if __doc__ else "",
        "suites": suites,
        "gutentag_by_anomaly_kind": kinds,
        "parts": files,
        "notes": [n for o in outcomes for n in o.notes],
        "seconds": round(seconds, 1),
        "config": dump_config(config),
    }


def _short(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("f1", "event_recall", "false_alerts_per_1000", "auc")}


# --- reporting -----------------------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def results_markdown(res: dict[str, Any], detectors: Sequence[str]) -> str:
    lines = ["# Detection benchmark", "", res["protocol"], "",
             "| suite | detector | F1 | precision | recall | event recall | false alerts / 1,000 normal rows | AUC "
             "| mean delay (rows) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for suite, by in res["suites"].items():
        for d in detectors:
            s = by[d]
            lines.append(f"| {suite} ({by['cases']} cases) | {d} | {_fmt(s['f1'])} | {_fmt(s['precision'])} | "
                         f"{_fmt(s['recall'])} | {_fmt(s['event_recall'])} | {_fmt(s['false_alerts_per_1000'], 1)} | "
                         f"{_fmt(s['auc'])} | {_fmt(s['mean_delay_rows'], 1)} |")  # fmt: skip
    if res["gutentag_by_anomaly_kind"]:
        lines += ["", "## GutenTAG by anomaly kind (F1 / event recall)", "",
                  "| kind | " + " | ".join(detectors) + " |", "|---" * (len(detectors) + 1) + "|"]  # fmt: skip
        for kind, by in res["gutentag_by_anomaly_kind"].items():
            cells = [f"{_fmt(by[d]['f1'], 2)} / {_fmt(by[d]['event_recall'], 2)}" for d in detectors]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if res["notes"]:
        lines += ["", f"## Notes ({len(res['notes'])})", "", *(f"- {n}" for n in res["notes"][:40])]
    lines += ["", f"{res['seconds']} s in all.", ""]
    return "\n".join(lines)


def plot_summary(path: Path, res: dict[str, Any], detectors: Sequence[str]) -> None:
    """Grouped bars: F1 and event recall per suite and detector."""
    import matplotlib  # only when plotting

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    suites = list(res["suites"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, ("f1", "event_recall", "false_alerts_per_1000"), strict=True):
        width = 0.8 / len(detectors)
        for i, d in enumerate(detectors):
            values = [res["suites"][s][d][metric] for s in suites]
            ax.bar(np.arange(len(suites)) + i * width, values, width, label=d)
        ax.set_xticks(np.arange(len(suites)) + 0.4 - width / 2, suites, rotation=20, fontsize=8)
        ax.set_title(metric.replace("_", " "))
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_suite(
    config: Config,
    cases: Sequence[Case],
    out: str | Path,
    *,
    detectors: Sequence[str] = DETECTORS,
    plots: bool = True,
    dump: bool = False,
) -> dict[str, Any]:
    """Run every detector on every case, then write results.json, results.md and a summary plot under `out`."""
    started = time.perf_counter()
    torch.set_num_threads(config.training.torch_threads)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for case in cases:
        outcomes.append(run_case(config, case, detectors, dump=target / "scores" if dump else None))
        log.info("%s done (%s)", case.name, ", ".join(f"{k} {v:.1f} s" for k, v in outcomes[-1].seconds.items()))
    res = results(config, outcomes, time.perf_counter() - started, detectors)
    (target / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (target / "results.md").write_text(results_markdown(res, detectors), encoding="utf-8")
    if plots:
        plot_summary(target / "summary.png", res, detectors)
    return res
