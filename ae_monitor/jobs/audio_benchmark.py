"""The audio benchmark: real machine clips and a synthetic fault suite, the shipped recipe against two baselines.

Protocol, per machine (a "pair": normal and abnormal recordings of one machine):
- every channel of the normal recording is a mono stream; the first 60 % of each (in time) trains, the rest is the
  normal test part; every channel of the abnormal recording is abnormal test data. Multichannel recordings are also
  split by channel (`-by-channel` pairs: the first 60 % of the channels train, the others are normal test data).
  Nothing of the test parts is seen before scoring, and labels are read only to compute the figures;
- window level: windows as the live pipeline makes them (`score_window_s`, `score_hop_s`); clip level: each test
  stream cut into `CLIP_S` s clips, a clip's score computed on the clip alone (the DCASE clip score);
- AUC and pAUC (`roc_auc_score(..., max_fpr=0.1)`, the standardised partial AUC of DCASE, chance 0.5);
- a machine is *inverted* when its window AUC is below 0.5: abnormal sound ranks as more normal than normal sound.

Machines: the real clips under a data folder (MIMII fan/pump/slider/valve, 8 channels each; the DCASE 2020 pump
pair, mono), skipped with a note when absent; and the synthetic suite of `machine_sounds.SUITE` (a 40 s normal and a
16 s abnormal recording per machine, rendered from fixed seeds).

Methods, all in one run:
- "recipe": the config under test (configs/audio-dcase.toml by default), trained and scored through ae_monitor's own
  path (`fit_extractor`, `train_model`, `score_signal`), exactly what `ae-monitor train` and `score` do;
- "dcase2020": the plain DCASE 2020 baseline, i.e. every default of `Config()`: raw log-mel dB, the dense
  autoencoder, mean squared error;
- "zscore": no learning: the per-mel-band mean and standard deviation of the training windows' mean log-mel; a
  window's (or clip's) score is the mean over bands of the squared z-score of its mean log-mel.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score

from ae_monitor.config import Config, FeaturesConfig, LogMelConfig, dump_config
from ae_monitor.features import FeatureExtractor, build_extractor
from ae_monitor.features.logmel import prepare_audio
from ae_monitor.jobs import machine_sounds
from ae_monitor.jobs.data import Signal, fit_extractor, score_signal, split_signals, vectors_of
from ae_monitor.jobs.train import calibrate_scored, scored_for_calibration
from ae_monitor.model.bundle import Bundle, weights_version
from ae_monitor.model.networks import build_model
from ae_monitor.model.training import seed_everything, train_model
from ae_monitor.scoring import scorer_for, window_plan
from ae_monitor.sources.files import read_audio

__all__ = [
    "CLIP_S",
    "METHODS",
    "Pair",
    "auc_figures",
    "real_pairs",
    "results_markdown",
    "run_benchmark",
    "synthetic_pairs",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Group = Literal["real", "synthetic"]

TRAIN_FRACTION = 0.6
CLIP_S = 2.0
MAX_FPR = 0.1
SYNTHETIC_NORMAL_S = 40.0
SYNTHETIC_ABNORMAL_S = 16.0
METHODS = ("recipe", "dcase2020", "zscore")
# Real pairs: (name, normal file, abnormal file) relative to the data folder (../shared/data/audio).
REAL_CLIPS = (
    ("mimii-fan", "mimii/fan_normal.wav", "mimii/fan_abnormal.wav"),
    ("mimii-pump", "mimii/pump_normal.wav", "mimii/pump_abnormal.wav"),
    ("mimii-slider", "mimii/slider_normal.wav", "mimii/slider_abnormal.wav"),
    ("mimii-valve", "mimii/valve_normal.wav", "mimii/valve_abnormal.wav"),
    (
        "dcase-pump-id06",
        "dcase2020-pump/normal_id_06_00000933.wav",
        "dcase2020-pump/anomaly_id_06_00000100.wav",
    ),
)


@dataclass(frozen=True)
class Pair:
    """One machine: mono training streams, normal test streams and abnormal test streams (16 kHz float32)."""

    name: str
    group: Group
    train: list[F32]
    normal: list[F32]
    abnormal: list[F32]


def split_recording(channels: Sequence[F32]) -> tuple[list[F32], list[F32]]:
    """The first `TRAIN_FRACTION` of every channel (training) and the rest (normal test).

    >>> train, test = split_recording([np.arange(10, dtype=np.float32)])
    >>> len(train[0]), len(test[0])
    (6, 4)
    """
    cut = [round(len(c) * TRAIN_FRACTION) for c in channels]
    return [c[:k] for c, k in zip(channels, cut, strict=True)], [c[k:] for c, k in zip(channels, cut, strict=True)]


def _channels(path: Path, features: FeaturesConfig) -> list[F32]:
    samples, rate = read_audio(path)
    frames = samples.reshape(len(samples), -1)
    per_channel = features.logmel.model_copy(update={"channel": 0})
    return [prepare_audio(frames[:, [c]], rate, per_channel) for c in range(frames.shape[1])]


def real_pairs(root: str | Path, features: FeaturesConfig) -> tuple[list[Pair], list[str]]:
    """The real pairs found under `root`, and a note for each one missing.

    Each recording is split in time (the first 60 % of every channel trains); a multichannel one is also split by
    channel (`<name>-by-channel`: the first 60 % of the channels train, whole, the others are normal test data).
    """
    pairs, notes = [], []
    for name, normal_file, abnormal_file in REAL_CLIPS:
        normal_path, abnormal_path = Path(root) / normal_file, Path(root) / abnormal_file
        if not (normal_path.is_file() and abnormal_path.is_file()):
            notes.append(f"{name}: skipped, {normal_path} or {abnormal_path} not found")
            continue
        channels, abnormal = _channels(normal_path, features), _channels(abnormal_path, features)
        train, normal = split_recording(channels)
        pairs.append(Pair(name, "real", train, normal, abnormal))
        if len(channels) > 1:
            # The harder reading of the protocol: unseen microphones rather than unseen seconds.
            cut = round(len(channels) * TRAIN_FRACTION)
            pairs.append(Pair(f"{name}-by-channel", "real", channels[:cut], channels[cut:], abnormal))
    return pairs, notes


def synthetic_pairs(
    specs: Sequence[machine_sounds.MachineSpec] = machine_sounds.SUITE,
    *,
    normal_s: float = SYNTHETIC_NORMAL_S,
    abnormal_s: float = SYNTHETIC_ABNORMAL_S,
) -> list[Pair]:
    """The synthetic machines rendered from their seeds: one normal and one abnormal recording each."""
    pairs = []
    for spec in specs:
        train, normal = split_recording([machine_sounds.normal(spec, normal_s)])
        pairs.append(Pair(spec.name, "synthetic", train, normal, [machine_sounds.abnormal(spec, abnormal_s)]))
    return pairs


# ---- methods: fit on the training streams, then score windows and clips -------------------------------------


class Detector:
    """A fitted method: `windows(y)` scores a test stream's windows, `clip(y)` one clip."""

    def windows(self, y: F32) -> F64:
        raise NotImplementedError

    def clip(self, y: F32) -> float:
        raise NotImplementedError


class AutoencoderDetector(Detector):
    """A bundle trained as `ae-monitor train` trains one (time-ordered train/validation split per stream)."""

    def __init__(self, config: Config, train: Sequence[F32]) -> None:
        seed_everything(config.training.seed)
        signals = [_signal(f"train-{i}", y, config.features) for i, y in enumerate(train)]
        fit, validation, _ = split_signals(
            signals, validation_fraction=config.training.validation_fraction, calibration_fraction=0.0
        )
        extractor = fit_extractor(config.features, fit)
        model = build_model(config.model, extractor.vector_shape)
        x_val = vectors_of(extractor, validation)
        train_model(
            model, vectors_of(extractor, fit), x_val, model_cfg=config.model, cfg=config.training, progress=False
        )
        bundle = Bundle(
            name="benchmark", version=weights_version(model), features=config.features, model_config=config.model,
            training=config.training, extractor=extractor, model=model, calibration=None, extra={},
        )  # fmt: skip
        cal = config.calibration
        if cal.aggregation != "mean" or cal.recent_steps or cal.window_statistic != "none":
            # How scores are formed (per-band scales, newest steps, window statistic) is part of the calibration:
            # fit it on all the training streams (the held-out validation part alone can be shorter than a window).
            scored = scored_for_calibration(bundle, signals, recent_steps=config.calibration.recent_steps)
            bundle = bundle.with_calibration(*calibrate_scored(bundle, scored, config.calibration))
        self.bundle = bundle
        self._scorer = scorer_for(self.bundle)

    def windows(self, y: F32) -> F64:
        scored = score_signal(self.bundle, self._scorer, _signal("test", y, self.bundle.features))
        return np.asarray([w.score for w in scored.windows], dtype=np.float64)

    def clip(self, y: F32) -> float:
        return score_signal(self.bundle, self._scorer, _signal("clip", y, self.bundle.features)).clip_score


class ZScoreDetector(Detector):
    """Per-mel-band z-scores of a window's (clip's) mean log-mel against the training windows' mean log-mel."""

    def __init__(self, features: FeaturesConfig, train: Sequence[F32]) -> None:
        plain = features.model_copy(update={"logmel": _plain_logmel(features)})
        self._extractor: FeatureExtractor = build_extractor(plain)
        self._size, self._hop = window_plan(plain)
        means = np.concatenate([self._window_means(y, hop=1) for y in train])
        self._mean, self._std = means.mean(axis=0), np.maximum(means.std(axis=0), 1e-3)

    def _bands(self, y: F32) -> F64:
        steps, groups = self._extractor.vector_shape
        data = self._extractor.transform(y).data.reshape(-1, steps, groups)
        return np.asarray(data.mean(axis=1, dtype=np.float64), dtype=np.float64)

    def _window_means(self, y: F32, *, hop: int) -> F64:
        bands = self._bands(y)
        if len(bands) <= self._size:
            return np.asarray(bands.mean(axis=0, keepdims=True), dtype=np.float64)
        cum = np.concatenate([np.zeros((1, bands.shape[1])), np.cumsum(bands, axis=0)])
        starts = np.arange(0, len(bands) - self._size + 1, hop)
        return np.asarray((cum[starts + self._size] - cum[starts]) / self._size, dtype=np.float64)

    def _z2(self, means: F64) -> F64:
        return np.asarray((((means - self._mean) / self._std) ** 2).mean(axis=-1), dtype=np.float64)

    def windows(self, y: F32) -> F64:
        return self._z2(self._window_means(y, hop=self._hop))

    def clip(self, y: F32) -> float:
        return float(self._z2(self._bands(y).mean(axis=0)))


def _plain_logmel(features: FeaturesConfig) -> LogMelConfig:
    """The log-mel settings in dB, whatever per-band scaling the config under test adds."""
    return features.logmel.model_copy(update={"band_scaling": "none"})


def _signal(name: str, y: F32, features: FeaturesConfig) -> Signal:
    ts = np.arange(len(y), dtype=np.float64) / features.logmel.sample_rate_hz
    return Signal(name, y, ts, ())


def build_detector(method: str, recipe: Config, train: Sequence[F32]) -> Detector:
    """Fit `method` ('recipe', 'dcase2020' or 'zscore') on the training streams of one machine."""
    if method == "recipe":
        return AutoencoderDetector(recipe, train)
    if method == "dcase2020":
        return AutoencoderDetector(dcase2020_config(recipe), train)
    if method == "zscore":
        return ZScoreDetector(recipe.features, train)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def dcase2020_config(recipe: Config) -> Config:
    """Every default (the plain 2020 baseline), with the recipe's training length and seed (quick runs stay quick)."""
    training = Config().training.model_copy(
        update={"epochs": recipe.training.epochs, "seed": recipe.training.seed, "batch_size": 512}
    )
    return Config(training=training)


# ---- figures ----------------------------------------------------------------------------------------------------


def auc_figures(normal: F64, abnormal: F64) -> dict[str, float]:
    """AUC and pAUC (max FPR 0.1) of abnormal scores against normal ones.

    >>> auc_figures(np.array([0.1, 0.2]), np.array([0.3, 0.4]))
    {'auc': 1.0, 'pauc': 1.0}
    """
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(abnormal))])
    s = np.concatenate([normal, abnormal])
    return {"auc": float(roc_auc_score(y, s)), "pauc": float(roc_auc_score(y, s, max_fpr=MAX_FPR))}


def clips_of(streams: Sequence[F32], sample_rate_hz: int) -> list[F32]:
    """Every stream cut into `CLIP_S` s clips (a shorter tail is dropped unless it is the stream's only clip)."""
    n = round(CLIP_S * sample_rate_hz)
    out = []
    for y in streams:
        out += [y[i : i + n] for i in range(0, max(1, len(y) - n + 1), n)]
    return out


@dataclass
class MachineResult:
    name: str
    group: Group
    figures: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> window/clip auc/pauc
    seconds: dict[str, float] = field(default_factory=dict)


def evaluate_pair(pair: Pair, recipe: Config, methods: Sequence[str] = METHODS) -> MachineResult:
    """Fit every method on the pair's training streams and score its test streams."""
    result = MachineResult(pair.name, pair.group)
    rate = recipe.features.logmel.sample_rate_hz
    normal_clips, abnormal_clips = clips_of(pair.normal, rate), clips_of(pair.abnormal, rate)
    for method in methods:
        started = time.perf_counter()
        detector = build_detector(method, recipe, pair.train)

        def windows(streams: Sequence[F32], d: Detector = detector) -> F64:
            return np.concatenate([d.windows(y) for y in streams])

        def clips(streams: Sequence[F32], d: Detector = detector) -> F64:
            return np.asarray([d.clip(y) for y in streams], dtype=np.float64)

        window = auc_figures(windows(pair.normal), windows(pair.abnormal))
        clip = auc_figures(clips(normal_clips), clips(abnormal_clips))
        result.figures[method] = {
            "window_auc": window["auc"], "window_pauc": window["pauc"],
            "clip_auc": clip["auc"], "clip_pauc": clip["pauc"],
        }  # fmt: skip
        result.seconds[method] = round(time.perf_counter() - started, 2)
        log.info("%s %s: %s", pair.name, method, result.figures[method])
    return result


def summary(results: Sequence[MachineResult], methods: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per group ('real', 'synthetic', 'all') and method: mean figures, share of inverted machines, worst AUC."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group in ("real", "synthetic", "all"):
        members = [r for r in results if group in ("all", r.group)]
        if not members:
            continue
        out[group] = {}
        for method in methods:
            rows = [r.figures[method] for r in members]
            means = {f"mean_{k}": float(np.mean([row[k] for row in rows])) for k in rows[0]}
            out[group][method] = {
                **means,
                "min_window_auc": float(min(row["window_auc"] for row in rows)),
                "inverted_share": float(np.mean([row["window_auc"] < 0.5 for row in rows])),
                "machines": float(len(rows)),
            }
    return out


def goals(results: Sequence[MachineResult], table: dict[str, dict[str, dict[str, float]]]) -> dict[str, bool]:
    """The goals for the recipe: no machine inverted (window or clip), every real window AUC >= 0.90, synthetic mean
    window AUC >= 0.95, and mean window and clip AUC above both baselines in every group."""
    recipe = [r.figures["recipe"] for r in results]
    out = {"no_inverted_machine": all(f["window_auc"] >= 0.5 and f["clip_auc"] >= 0.5 for f in recipe)}
    real = [r.figures["recipe"]["window_auc"] for r in results if r.group == "real"]
    if real:
        out["real_window_auc_at_least_0.90"] = min(real) >= 0.90
    if "synthetic" in table:
        out["synthetic_mean_window_auc_at_least_0.95"] = table["synthetic"]["recipe"]["mean_window_auc"] >= 0.95
    for baseline in ("dcase2020", "zscore"):
        out[f"above_{baseline}"] = all(
            _above(table[g]["recipe"][key], table[g][baseline][key])
            for g in table
            if g != "all"
            for key in ("mean_window_auc", "mean_clip_auc")
        )
    return out


def _above(recipe: float, baseline: float) -> bool:
    """Strictly above, or level with a baseline that is already perfect (nothing is above an AUC of 1)."""
    return recipe > baseline or recipe >= baseline >= 1.0 - 1e-9


# ---- the run ------------------------------------------------------------------------------------------------------


def run_benchmark(
    recipe: Config,
    out: str | Path,
    *,
    data: str | Path | None,
    specs: Sequence[machine_sounds.MachineSpec] = machine_sounds.SUITE,
    synthetic_normal_s: float = SYNTHETIC_NORMAL_S,
    synthetic_abnormal_s: float = SYNTHETIC_ABNORMAL_S,
    plots: bool = True,
    on_machine: Callable[[MachineResult], None] | None = None,
) -> dict[str, Any]:
    """Run every method on every machine, write results.json, results.md and plots to `out`, return the results."""
    started = time.perf_counter()
    torch.set_num_threads(recipe.training.torch_threads)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    pairs, notes = real_pairs(data, recipe.features) if data is not None else ([], ["real clips: no data folder"])
    pairs += synthetic_pairs(specs, normal_s=synthetic_normal_s, abnormal_s=synthetic_abnormal_s)
    results = []
    for pair in pairs:
        results.append(evaluate_pair(pair, recipe))
        if on_machine is not None:
            on_machine(results[-1])
    table = summary(results, METHODS)
    report: dict[str, Any] = {
        "protocol": (
            f"per machine: train on the first {TRAIN_FRACTION:.0%} (in time) of every channel of the normal "
            f"recording (-by-channel: on the first {TRAIN_FRACTION:.0%} of its channels); test on the rest and on "
            "every channel of the abnormal recording; windows as the live "
            f"pipeline makes them, clips of {CLIP_S:g} s; pAUC = roc_auc_score(max_fpr={MAX_FPR}); inverted = "
            "window AUC < 0.5"
        ),
        "methods": {
            "recipe": "the config under test",
            "dcase2020": "the plain DCASE 2020 baseline (Config() defaults)",
            "zscore": "per-mel-band z-score of the mean log-mel against the training windows (no learning)",
        },
        "notes": notes,
        "machines": {r.name: {"group": r.group, **r.figures, "seconds": r.seconds} for r in results},
        "summary": table,
        "goals": goals(results, table) if results else {},
        "seconds": round(time.perf_counter() - started, 1),
        "config": dump_config(recipe),
    }
    (target / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (target / "results.md").write_text(results_markdown(report), encoding="utf-8")
    if plots and results:
        _plot_aucs(target, results)
    return report


def results_markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown page: per-machine table, summary per group, goals."""
    lines = ["# Audio benchmark", "", report["protocol"] + ".", ""]
    lines += [f"- {note}" for note in report["notes"]]
    lines += ["", "| machine | method | window AUC | window pAUC | clip AUC | clip pAUC |", "|---|---|---|---|---|---|"]
    for name, machine in report["machines"].items():
        for method in METHODS:
            f = machine[method]
            flag = " **inverted**" if f["window_auc"] < 0.5 else ""
            lines.append(
                f"| {name} | {method}{flag} | {f['window_auc']:.3f} | {f['window_pauc']:.3f} | "
                f"{f['clip_auc']:.3f} | {f['clip_pauc']:.3f} |"
            )
    lines += [
        "",
        "| group | method | mean window AUC | mean window pAUC | mean clip AUC | mean clip pAUC | min window AUC "
        "| inverted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, methods in report["summary"].items():
        for method, s in methods.items():
            lines.append(
                f"| {group} | {method} | {s['mean_window_auc']:.3f} | {s['mean_window_pauc']:.3f} | "
                f"{s['mean_clip_auc']:.3f} | {s['mean_clip_pauc']:.3f} | {s['min_window_auc']:.3f} | "
                f"{s['inverted_share']:.0%} of {int(s['machines'])} |"
            )
    lines += ["", "Goals (recipe): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["goals"].items())]
    lines += ["", f"{report['seconds']} s.", ""]
    return "\n".join(lines)


def _plot_aucs(target: Path, results: Sequence[MachineResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for level in ("window", "clip"):
        fig, ax = plt.subplots(figsize=(12, 4.5))
        x = np.arange(len(results))
        for i, method in enumerate(METHODS):
            values = [r.figures[method][f"{level}_auc"] for r in results]
            ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=method)
        ax.axhline(0.5, color="black", lw=0.8, linestyle="--")
        ax.set_xticks(x, [r.name for r in results], rotation=45, ha="right", fontsize="small")
        ax.set(ylim=(0, 1.02), ylabel=f"{level} AUC", title=f"{level} AUC per machine (dashed: chance)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
        fig.tight_layout()
        fig.savefig(target / f"{level}_auc.png", dpi=100)
        plt.close(fig)


def quick_pairs(names: Sequence[str]) -> list[machine_sounds.MachineSpec]:
    """The suite's machines with these names (for small runs)."""
    return [s for s in machine_sounds.SUITE if s.name in names]
