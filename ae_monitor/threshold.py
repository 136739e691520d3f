"""Stage 6, threshold: calibrate the decision threshold from the scores of held-out normal windows.

The threshold wraps any scorer: it only sees a 1-D array of scores (higher = more anomalous) and returns a
`Calibration`, which travels in the model bundle's JSON manifest (`to_dict` / `from_dict`). Methods:

- ``quantile``: the empirical `quantile` of the scores.
- ``gamma``: the DCASE Task 2 recipe; fit a gamma distribution, threshold = its `ppf(gamma_percentile)`.
- ``pot``: peaks over threshold (SPOT initialisation, Siffer et al., KDD 2017); a generalised Pareto tail fitted
  above the `pot_initial_quantile` gives the score exceeded with probability `pot_risk`.
- ``false_alarm_rate``: the same tail model, aimed at `false_alarms_per_hour` per stream given the window hop.
- ``target``: the score normal windows exceed `target_false_alerts_per_1000_windows` times per 1,000: the empirical
  quantile where the sample holds at least `MIN_EXCEEDANCES` such windows, else a generalised Pareto tail fitted to
  the top scores (peaks over threshold), else (too little data for any tail) the largest score, with a note saying
  so. Meant for out-of-fold scores (`calibration.folds`), which run as high as new normal data does, so no margin.

Every method's value is multiplied by `margin` (1.0 by default): a safety factor for thresholds calibrated on the
training windows themselves. `StreamingPot` is the online variant (DSPOT): a per-stream threshold that follows the
live scores, learning only from windows it does not flag.

`Calibration.tail_probability(score)` estimates P(normal score >= score) with the method's own model;
`Calibration.surprise(score)` is its -log10, computed in log space (no floor at the smallest float), comparable
across streams and bundles: 3 means "a normal window scores this high once in 1,000". The 101
`reference_quantiles` let later stages watch the live score distribution drift away from the calibration set.

    >>> from ae_monitor.config import CalibrationConfig
    >>> cal = calibrate(np.arange(101.0), CalibrationConfig(method="quantile", quantile=0.9), window_hop_s=0.5)
    >>> cal.threshold, cal.tail_probability(-1.0)
    (90.0, 1.0)
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from ae_monitor.config import CalibrationConfig
from ae_monitor.errors import BundleError, ConfigError, DataError
from ae_monitor.records import WindowScore

log = logging.getLogger(__name__)

METHODS = ("quantile", "gamma", "pot", "false_alarm_rate", "target")
AGGREGATIONS = ("mean", "max")
# The empirical quantile is trusted only when at least this many calibration scores lie above it.
MIN_EXCEEDANCES = 10
N_REFERENCE_QUANTILES = 101
# A GPD fitted to fewer peaks than this is mostly noise; SPOT's authors use hundreds.
MIN_PEAKS = 10
# A tracked threshold (calibration.online = "track") follows a stream only once it has this many accepted scores.
MIN_TRACKED = 10
# tail_probability never returns 0: a score beyond every model's support is "very rare", not impossible.
TAIL_FLOOR = float(np.finfo(np.float64).tiny)
_GPD_KEYS = ("t", "sigma", "xi", "n_peaks")

Scores = npt.NDArray[np.float64]


# The log survival functions of the two fitted tails in closed form: the values of scipy.stats' `logsf` (tested
# against it), without its argument checking and broadcasting, which cost 30-90 us per call. Every micro-batch
# calls them once per bundle, and once per stream for streams with models of their own.
def gpd_logsf(x: npt.ArrayLike, xi: float, *, scale: float) -> Scores:
    """`stats.genpareto.logsf(x, xi, scale=scale)`: 0 at and below 0, -inf past a bounded tail's end."""
    z = np.asarray(x, dtype=np.float64) / scale
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = -np.log1p(xi * z) / xi if xi != 0 else -z
    out = np.where(z <= 0, 0.0, inside)
    if xi < 0:
        out = np.where(z >= -1.0 / xi, -np.inf, out)
    return np.asarray(out, dtype=np.float64)


def gamma_logsf(x: npt.ArrayLike, shape: float, *, loc: float, scale: float) -> Scores:
    """`stats.gamma.logsf(x, shape, loc=loc, scale=scale)`: 0 at and below `loc`."""
    z = np.maximum((np.asarray(x, dtype=np.float64) - loc) / scale, 0.0)
    cdf = special.gammainc(shape, z)
    # As scipy: log1p(-cdf) in the lower half (exact near 1), log(sf) in the upper (the far tail's precision).
    with np.errstate(divide="ignore"):
        inside = np.where(cdf < 0.5, np.log1p(-cdf), np.log(special.gammaincc(shape, z)))
    return np.asarray(np.where(z <= 0, 0.0, inside), dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and what is needed to explain it later (method, fitted values, data fingerprint)."""

    threshold: float
    method: str
    parameters: dict[str, float]
    n_samples: int
    data_sha256: str
    created_at: str
    reference_quantiles: tuple[float, ...]
    # How window scores are formed (scoring.Scorer): "mean" squared error, or the "max" over groups of each group's
    # error divided by `group_scale` (one value per channel or mel band). Old bundles have neither: "mean".
    aggregation: str = "mean"
    group_scale: tuple[float, ...] | None = None
    # Time steps of each vector the score covers, counted back from the newest (0 = all; old bundles: all).
    recent_steps: int = 0
    # How windows join their mean score with a window statistic (band_statistic.BandMeanZ.to_dict); None = the mean
    # alone (old bundles).
    window_statistic: dict[str, Any] | None = None
    # What calibration could not do as asked and what it did instead (shown by train/calibrate, kept for audits).
    notes: tuple[str, ...] = ()
    # The [calibration] settings that produced this record; `calibrate` reuses them unless told otherwise.
    settings: dict[str, Any] | None = None
    # A generalised Pareto tail (t, sigma, xi, ...) over the top scores, for `surprise` past the largest score when
    # the method itself fits none; None for old records and where the data is too short.
    tail_fit: dict[str, float] | None = None
    # The calibrated linear monitor (model.linear.LinearMonitor.to_dict) whose terms join the "max" aggregation;
    # None = none (old bundles). Kept as plain data here: the bundle loader checks it.
    linear: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")
        if self.aggregation == "max" and not self.group_scale:
            raise ValueError("aggregation 'max' needs group_scale")
        if self.group_scale is not None and not all(math.isfinite(v) and v > 0 for v in self.group_scale):
            raise ValueError(f"group_scale must hold finite positive values, got {self.group_scale}")
        if self.recent_steps < 0:
            raise ValueError(f"recent_steps must be >= 0, got {self.recent_steps}")
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; expected one of {', '.join(METHODS)}")
        if len(self.reference_quantiles) != N_REFERENCE_QUANTILES:
            raise ValueError(
                f"expected {N_REFERENCE_QUANTILES} reference quantiles, got {len(self.reference_quantiles)}"
            )
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be at least 2, got {self.n_samples}")

    def tail_probability(self, score: float) -> float:
        """Estimated P(normal score >= `score`), in (0, 1] and non-increasing in `score`.

        GPD tail above t when a POT tail was fitted, gamma survival for `gamma`, else the empirical tail
        interpolated linearly between the reference quantiles (floored at 1 / (n_samples + 1)).
        """
        if math.isnan(score):
            raise DataError("tail_probability needs a score, got NaN")
        if self.method == "gamma":
            p = self._gamma_tail(score)
        elif all(key in self.parameters for key in _GPD_KEYS):
            p = self._pot_tail(score)
        else:
            p = self._empirical_tail(score)
        return min(1.0, max(p, TAIL_FLOOR))

    def log_tail_probability(self, score: float) -> float:
        """Natural log of `tail_probability`, computed in log space: no floor, so far tails stay distinct."""
        if math.isnan(score):
            raise DataError("tail_probability needs a score, got NaN")
        return float(self.log_tail_probabilities(np.array([score]))[0])

    def log_tail_probabilities(self, scores: npt.ArrayLike) -> Scores:
        """`log_tail_probability` of every score at once (NaN stays NaN); vectorised for live use."""
        x = np.asarray(scores, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        ok = ~np.isnan(x)
        v, p = x[ok], self.parameters
        if self.method == "gamma":
            logs = gamma_logsf(v, p["shape"], loc=p["loc"], scale=p["scale"])
        else:
            with np.errstate(divide="ignore"):
                logs = np.log(self._empirical_tails(v))
            tail = self.tail_fit
            if tail is not None and not all(key in p for key in _GPD_KEYS):
                # Past the largest calibration score the empirical tail is flat; the fitted tail keeps decaying.
                top = self.reference_quantiles[-1]
                beyond = v > top
                decay = gpd_logsf(v[beyond] - tail["t"], tail["xi"], scale=tail["sigma"])
                logs[beyond] += decay - gpd_logsf(top - tail["t"], tail["xi"], scale=tail["sigma"])
            if all(key in p for key in _GPD_KEYS):
                log_rate = math.log(p["n_peaks"] / self.n_samples)
                above = v >= p["t"]
                # Below t the empirical tail, never under the peak rate (monotone across t); above it the GPD.
                logs = np.where(above, log_rate, np.maximum(logs, log_rate))
                logs[above] += gpd_logsf(v[above] - p["t"], p["xi"], scale=p["sigma"])
                if p["xi"] < 0:
                    logs = self._exponential_past_the_sample(v, logs, log_rate)
        out[ok] = np.minimum(np.asarray(logs, dtype=np.float64), 0.0)
        return out

    def _exponential_past_the_sample(self, v: Scores, logs: Scores, log_rate: float) -> Scores:
        """A bounded POT tail (xi < 0) puts every score past its endpoint at probability 0 (surprise inf). Past the
        largest calibration score, where the fit has no data anyway, it goes on as an exponential with the GPD's
        local scale there: finite, still decaying. Inside the sample the fit is kept (and the threshold with it)."""
        p, top = self.parameters, self.reference_quantiles[-1]
        beyond = v > top
        if not beyond.any():
            return logs
        scale = max(p["sigma"] + p["xi"] * (top - p["t"]), 1e-12 * max(abs(top), 1.0))
        at_top = log_rate + float(gpd_logsf(top - p["t"], p["xi"], scale=p["sigma"]))
        out = logs.copy()
        out[beyond] = at_top - (v[beyond] - top) / scale
        return out

    def _empirical_tails(self, v: Scores) -> Scores:
        floor = 1.0 / (self.n_samples + 1)
        values, levels = self._tail_knots
        tails = 1.0 - np.interp(v, values, levels)
        tails[v > self.reference_quantiles[-1]] = floor
        return np.maximum(tails, floor)

    @functools.cached_property
    def _tail_knots(self) -> tuple[Scores, Scores]:
        """The empirical tail's knots, made once (every micro-batch asks): the distinct reference quantiles and the
        lowest level of each (tied quantiles, a point mass, take their lowest level)."""
        quantiles = np.asarray(self.reference_quantiles)
        values, first = np.unique(quantiles, return_index=True)
        return values, np.linspace(0.0, 1.0, quantiles.size)[first]

    def surprise(self, score: float) -> float:
        """-log10 P(normal score >= `score`): 0 for ordinary scores, 3 for a one-in-1,000 window, finite and still
        rising far past the largest calibration score. Comparable across streams and bundles, unlike raw scores.

            >>> cal = calibrate(np.arange(1000.0), CalibrationConfig(method="quantile", quantile=0.9), window_hop_s=1)
            >>> round(cal.surprise(899.0), 2)
            1.0
        """
        return -self.log_tail_probability(score) / math.log(10.0)

    def surprises(self, scores: npt.ArrayLike) -> Scores:
        """`surprise` of every score at once (NaN stays NaN): what the scores topic and alerts should carry."""
        return -self.log_tail_probabilities(scores) / math.log(10.0)

    def _gamma_tail(self, score: float) -> float:
        p = self.parameters
        return float(stats.gamma.sf(score, p["shape"], loc=p["loc"], scale=p["scale"]))

    def _pot_tail(self, score: float) -> float:
        p = self.parameters
        peak_rate = p["n_peaks"] / self.n_samples
        if score < p["t"]:
            # Keep the estimate monotone across t: below it the empirical tail can never drop under the peak rate.
            return max(self._empirical_tail(score), peak_rate)
        return peak_rate * float(stats.genpareto.sf(score - p["t"], p["xi"], scale=p["sigma"]))

    def _empirical_tail(self, score: float) -> float:
        floor = 1.0 / (self.n_samples + 1)
        if score > self.reference_quantiles[-1]:
            return floor
        # Tied quantiles (a point mass) take their lowest level, so P(X >= tied value) counts the whole mass.
        values, levels = self._tail_knots
        return max(1.0 - float(np.interp(score, values, levels)), floor)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only, for the bundle manifest."""
        return {
            "threshold": self.threshold,
            "method": self.method,
            "parameters": dict(self.parameters),
            "n_samples": self.n_samples,
            "data_sha256": self.data_sha256,
            "created_at": self.created_at,
            "reference_quantiles": list(self.reference_quantiles),
            "aggregation": self.aggregation,
            "group_scale": None if self.group_scale is None else list(self.group_scale),
            "recent_steps": self.recent_steps,
            "window_statistic": self.window_statistic,
            "notes": list(self.notes),
            "settings": self.settings,
            "tail_fit": self.tail_fit,
            "linear": self.linear,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Calibration:
        """Inverse of `to_dict`; raises BundleError naming the bad field."""
        try:
            return Calibration(
                threshold=float(d["threshold"]),
                method=str(d["method"]),
                parameters={str(k): float(v) for k, v in d["parameters"].items()},
                n_samples=int(d["n_samples"]),
                data_sha256=str(d["data_sha256"]),
                created_at=str(d["created_at"]),
                reference_quantiles=tuple(float(v) for v in d["reference_quantiles"]),
                aggregation=str(d.get("aggregation", "mean")),
                group_scale=None if d.get("group_scale") is None else tuple(float(v) for v in d["group_scale"]),
                recent_steps=int(d.get("recent_steps", 0)),
                window_statistic=None if d.get("window_statistic") is None else dict(d["window_statistic"]),
                notes=tuple(str(n) for n in d.get("notes", ())),
                settings=None if d.get("settings") is None else dict(d["settings"]),
                tail_fit=None if d.get("tail_fit") is None else {str(k): float(v) for k, v in d["tail_fit"].items()},
                linear=None if d.get("linear") is None else dict(d["linear"]),
            )
        except KeyError as exc:
            raise BundleError("missing from the manifest", field=f"calibration.{exc.args[0]}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"malformed: {exc}", field="calibration") from exc


def calibrate(
    scores: npt.ArrayLike, cfg: CalibrationConfig, *, window_hop_s: float, created_at: str | None = None
) -> Calibration:
    """Calibrate a threshold on the scores of normal windows with `cfg.method`.

    `window_hop_s` (seconds between consecutive windows of a stream) converts `false_alarms_per_hour` into a
    per-window risk. `created_at` defaults to now (ISO 8601, UTC); pass it for byte-identical manifests.
    Raises DataError for unusable scores, ConfigError when `pot_risk` is not inside the fitted tail.
    """
    if not window_hop_s > 0:
        raise ValueError(f"window_hop_s must be > 0, got {window_hop_s}")
    x = _checked_scores(scores)
    notes: list[str] = []
    if cfg.method == "target":
        threshold, parameters = _target(x, cfg, notes)
    else:
        threshold, parameters = _METHOD_FUNCTIONS[cfg.method](x, cfg, window_hop_s)
    if cfg.margin != 1.0:
        parameters = {**parameters, "margin": cfg.margin}
    # Methods without a tail of their own (quantile, ...) get one for `surprise` beyond the largest score.
    tail_fit = (
        None
        if cfg.method == "gamma" or all(k in parameters for k in _GPD_KEYS)
        else _tail_fit(x, cfg.pot_initial_quantile)
    )
    for note in notes:
        log.warning("calibration: %s", note)
    return Calibration(
        threshold=threshold * cfg.margin,
        method=cfg.method,
        parameters=parameters,
        n_samples=int(x.size),
        data_sha256=scores_sha256(x),
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        reference_quantiles=tuple(np.quantile(x, np.linspace(0.0, 1.0, N_REFERENCE_QUANTILES)).tolist()),
        notes=tuple(notes),
        settings=cfg.model_dump(mode="json"),
        tail_fit=tail_fit,
    )


def _target(x: Scores, cfg: CalibrationConfig, notes: list[str]) -> tuple[float, dict[str, float]]:
    """The score normal windows exceed at the target rate: empirical, else a GPD tail, else the maximum (noted)."""
    risk = cfg.target_false_alerts_per_1000_windows / 1000.0
    params = {"target_false_alerts_per_1000_windows": cfg.target_false_alerts_per_1000_windows, "risk": risk}
    fit = _tail_fit(x, cfg.pot_initial_quantile)
    if fit is not None:
        params |= fit
    if x.size * risk >= MIN_EXCEEDANCES:
        return float(np.quantile(x, 1.0 - risk)), {**params, "estimate": 0.0}
    if fit is not None and risk < fit["n_peaks"] / x.size:
        return _gpd_quantile(fit, risk, x.size), {**params, "estimate": 1.0}
    notes.append(
        f"{x.size} normal window scores cannot support {cfg.target_false_alerts_per_1000_windows:g} false alerts per "
        f"1,000 windows (an empirical estimate needs {math.ceil(MIN_EXCEEDANCES / risk)} windows, a tail fit at "
        f"least {MIN_PEAKS * 2}); the threshold is the largest normal score instead (expect about "
        f"{1000.0 / (x.size + 1):.3g} per 1,000). Train or calibrate on more normal data"
    )
    return float(x.max()), {**params, "estimate": 2.0}


def _tail_fit(x: Scores, initial_quantile: float) -> dict[str, float] | None:
    """A GPD over the top scores: above `initial_quantile`, lowered so at least MIN_PEAKS peaks take part."""
    if x.size < 2 * MIN_PEAKS or np.ptp(x) == 0:
        return None
    q = min(initial_quantile, 1.0 - MIN_PEAKS / x.size)
    t, excesses = _peaks(x, q)
    if excesses.size < MIN_PEAKS or np.ptp(excesses) == 0:
        return None
    fit = _fit_gpd(t, excesses)
    if fit["xi"] < 0:
        # A bounded tail would put every score past its endpoint at probability 0 (surprise inf) and fits short
        # samples poorly: read it as exponential (xi = 0, sigma = the mean excess), the conservative choice.
        fit |= {"xi": 0.0, "sigma": float(excesses.mean())}
    return {"initial_quantile": q, **fit}


def scores_sha256(scores: npt.ArrayLike) -> str:
    """Fingerprint of calibration scores: sha256 of their float64 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(scores, dtype="<f8").tobytes()).hexdigest()


def _checked_scores(scores: npt.ArrayLike) -> Scores:
    try:
        x = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"calibration scores must be numbers: {exc}") from exc
    if x.ndim != 1:
        raise DataError(f"calibration scores must be a 1-D array, got shape {x.shape}")
    if x.size < 2:
        raise DataError(f"calibration needs at least 2 scores, got {x.size}; hold out more normal data")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise DataError(
            f"{bad.size} of {x.size} calibration scores are NaN or infinite (first at index {bad[0]}); "
            "the features or the model produced invalid values"
        )
    return x


def _quantile(x: Scores, cfg: CalibrationConfig, hop_s: float) -> tuple[float, dict[str, float]]:
    return float(np.quantile(x, cfg.quantile)), {"quantile": cfg.quantile}


def _gamma(x: Scores, cfg: CalibrationConfig, hop_s: float) -> tuple[float, dict[str, float]]:
    if np.ptp(x) == 0:
        raise DataError(f"gamma calibration needs scores that vary; all {x.size} scores equal {x[0]}")
    shape, loc, scale = (float(v) for v in stats.gamma.fit(x))
    threshold = float(stats.gamma.ppf(cfg.gamma_percentile, shape, loc=loc, scale=scale))
    if not math.isfinite(threshold):
        raise DataError(f"gamma fit gave no finite threshold (shape={shape}, loc={loc}, scale={scale})")
    return threshold, {"percentile": cfg.gamma_percentile, "shape": shape, "loc": loc, "scale": scale}


def _pot(x: Scores, cfg: CalibrationConfig, hop_s: float) -> tuple[float, dict[str, float]]:
    t, excesses = _peaks(x, cfg.pot_initial_quantile)
    if excesses.size < MIN_PEAKS:
        raise DataError(_too_few_peaks_message(x.size, excesses.size, cfg.pot_initial_quantile))
    if cfg.pot_risk >= excesses.size / x.size:
        raise ConfigError(
            f"{cfg.pot_risk:g} is not inside the fitted tail ({excesses.size} of {x.size} scores lie above the "
            f"initial threshold); lower pot_risk or pot_initial_quantile",
            key="calibration.pot_risk",
        )
    fit = _fit_gpd(t, excesses)
    params = {"initial_quantile": cfg.pot_initial_quantile, "risk": cfg.pot_risk, **fit}
    return _gpd_quantile(fit, cfg.pot_risk, x.size), params


def _false_alarm_rate(x: Scores, cfg: CalibrationConfig, hop_s: float) -> tuple[float, dict[str, float]]:
    windows_per_hour = 3600.0 / hop_s
    # Above 0.5 per window the "threshold" would sit below the median: the target is not an alarm rate any more.
    risk = min(cfg.false_alarms_per_hour / windows_per_hour, 0.5)
    params = {
        "false_alarms_per_hour": cfg.false_alarms_per_hour,
        "window_hop_s": hop_s,
        "windows_per_hour": windows_per_hour,
        "risk": risk,
        "initial_quantile": cfg.pot_initial_quantile,
    }
    t, excesses = _peaks(x, cfg.pot_initial_quantile)
    if excesses.size >= MIN_PEAKS and risk < excesses.size / x.size:
        fit = _fit_gpd(t, excesses)
        return _gpd_quantile(fit, risk, x.size), {**params, **fit}
    return float(np.quantile(x, 1.0 - risk)), params


def _peaks(x: Scores, initial_quantile: float) -> tuple[float, Scores]:
    t = float(np.quantile(x, initial_quantile))
    return t, x[x > t] - t


def _fit_gpd(t: float, excesses: Scores) -> dict[str, float]:
    """Maximum-likelihood GPD fit with scipy (SPOT uses Grimshaw's trick; plain MLE is as accurate here)."""
    xi, _, sigma = (float(v) for v in stats.genpareto.fit(excesses, floc=0))
    return {"t": t, "sigma": sigma, "xi": xi, "n_peaks": float(excesses.size)}


def _gpd_quantile(fit: Mapping[str, float], risk: float, n: int) -> float:
    """SPOT's z_q: the score exceeded with probability `risk` under the fitted tail."""
    ratio = risk * n / fit["n_peaks"]
    if fit["xi"] == 0.0:
        return fit["t"] - fit["sigma"] * math.log(ratio)
    return fit["t"] + fit["sigma"] / fit["xi"] * (float(ratio ** -fit["xi"]) - 1.0)


def min_calibration_scores(cfg: CalibrationConfig) -> int:
    """The fewest normal window scores `calibrate` can accept with `cfg` (the other methods fall back to the largest
    score on short data; peaks-over-threshold needs its peaks), so that training can refuse short data first."""
    return _pot_scores_needed(cfg.pot_initial_quantile) if cfg.method == "pot" else 2


@functools.cache
def _pot_scores_needed(initial_quantile: float) -> int:
    """The fewest scores that give MIN_PEAKS peaks over their `initial_quantile` when they are all distinct (ties
    give fewer): found with `_peaks` itself, so the check and the calibration cannot disagree."""
    low, high = MIN_PEAKS - 1, math.ceil(MIN_PEAKS / (1.0 - initial_quantile)) + 1  # too few; enough
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _peaks(np.arange(float(middle)), initial_quantile)[1].size >= MIN_PEAKS else (
            middle, high)  # fmt: skip
    return high


def _too_few_peaks_message(n: int, n_peaks: int, initial_quantile: float) -> str:
    needed = _pot_scores_needed(initial_quantile)
    return (
        f"peaks-over-threshold needs at least {MIN_PEAKS} scores above the initial threshold (the "
        f"{initial_quantile:g} quantile) but {n} scores gave {n_peaks}; calibrate on at least {needed} scores "
        "or lower calibration.pot_initial_quantile"
    )


_METHOD_FUNCTIONS: dict[str, Callable[[Scores, CalibrationConfig, float], tuple[float, dict[str, float]]]] = {
    "quantile": _quantile,
    "gamma": _gamma,
    "pot": _pot,
    "false_alarm_rate": _false_alarm_rate,
}


class StreamingPot:
    """DSPOT (Siffer et al., KDD 2017): a peaks-over-threshold threshold that follows one stream's live scores.

    Built from normal calibration scores. With `depth` > 0 it models the scores minus the mean of the last `depth`
    normal scores (the drift-aware variant); `depth` = 0 is plain SPOT. Each `update(score)`:
    - above the current threshold: flagged, and the model does NOT learn from it (anomalies never move the tail);
    - above the initial threshold t: a new peak; the GPD tail is refitted and the threshold follows it;
    - otherwise only the sample count (and the drift window) moves on.

        >>> rng = np.random.default_rng(0)
        >>> pot = StreamingPot(rng.exponential(1.0, 2000), risk=1e-3, initial_quantile=0.98)
        >>> pot.update(50.0), pot.update(0.5)
        (True, False)
    """

    def __init__(
        self,
        calibration_scores: npt.ArrayLike,
        *,
        risk: float,
        initial_quantile: float,
        depth: int = 0,
        fallback_threshold: float | None = None,
    ) -> None:
        x = _checked_scores(calibration_scores)
        if depth < 0 or depth >= x.size:
            raise ValueError(f"depth must be in [0, {x.size}) for {x.size} calibration scores, got {depth}")
        self._risk, self._depth = risk, depth
        self._recent = list(x[x.size - depth :]) if depth else []
        residuals = x[depth:] - self._drift_means(x) if depth else x
        # Short calibration data: lower the initial quantile until MIN_PEAKS peaks take part, never below the median.
        q = max(0.5, min(initial_quantile, 1.0 - MIN_PEAKS / residuals.size))
        self._t, excesses = _peaks(residuals, q)
        self._peaks, self._n = list(excesses), int(residuals.size)
        self.fallback: str | None = None
        if excesses.size < MIN_PEAKS or risk >= excesses.size / residuals.size:
            # Start anyway with a fixed threshold (the bundle's, else the largest score) and say so; never refuse.
            self._z = float(np.max(residuals)) if fallback_threshold is None else fallback_threshold - self.level
            self.fallback = (
                f"{_too_few_peaks_message(residuals.size, excesses.size, q)}; live thresholds stay fixed at "
                f"{self.threshold:.6g} until the stream's tail can be fitted"
                if excesses.size < MIN_PEAKS
                else f"risk {risk:g} lies beyond the {excesses.size} calibration peaks; threshold fixed at "
                f"{self.threshold:.6g}"
            )
            log.warning("DSPOT: %s", self.fallback)
        else:
            self._refit()

    def _drift_means(self, x: Scores) -> Scores:
        # Mean of the `depth` scores before each one: the local level DSPOT subtracts.
        cumulative = np.concatenate([[0.0], np.cumsum(x)])
        means: Scores = (cumulative[self._depth : -1] - cumulative[: x.size - self._depth]) / self._depth
        return means

    def _can_fit(self) -> bool:
        return len(self._peaks) >= MIN_PEAKS and self._risk < len(self._peaks) / self._n

    def _refit(self) -> None:
        fit = _fit_gpd(self._t, np.asarray(self._peaks))
        self._z = _gpd_quantile(fit, self._risk, self._n)

    @property
    def level(self) -> float:
        """The local mean added back to the tail model's quantile (0 without drift)."""
        return float(np.mean(self._recent)) if self._recent else 0.0

    @property
    def threshold(self) -> float:
        """The current threshold in score units."""
        return self._z + self.level

    def update(self, score: float) -> bool:
        """Feed one live score; True when it is flagged (it then leaves the model untouched)."""
        residual = score - self.level
        if residual > self._z:
            return True
        self._n += 1
        if residual > self._t:
            self._peaks.append(residual - self._t)
            if self.fallback is None or self._can_fit():
                self.fallback = None
                self._refit()
        if self._depth:
            self._recent = [*self._recent[1:], score]
        return False


class _PerStream:
    """Live thresholds kept per stream: `judge` many windows at once, one window by call, forget streams."""

    _streams: dict[str, Any]

    def judge(self, streams: Sequence[str], scores: npt.NDArray[np.float64]) -> Scores:
        raise NotImplementedError

    def __call__(self, window: WindowScore) -> WindowScore:
        return replace(window, threshold=float(self.judge([window.stream], np.array([window.score]))[0]))

    def forget(self, streams: Iterable[str]) -> None:
        """Drop the state of streams this process no longer owns (evicted, or their partition moved)."""
        for stream in streams:
            self._streams.pop(stream, None)


class OnlineThresholds(_PerStream):
    """One `StreamingPot` per stream of a bundle, started from its calibration scores (`calibration.online = "dspot"`).

    Call it on each WindowScore before the alert decision: it returns the window with the stream's live threshold,
    and only windows under that threshold teach the stream's tail model.
    """

    def __init__(
        self, calibration_scores: npt.ArrayLike, cfg: CalibrationConfig, *, fallback_threshold: float | None = None
    ) -> None:
        self._scores = _checked_scores(calibration_scores)
        self._cfg = cfg
        self._fallback = fallback_threshold
        self._streams: dict[str, StreamingPot] = {}

    def threshold(self, stream: str) -> float:
        return self._pot(stream).threshold

    def _pot(self, stream: str) -> StreamingPot:
        pot = self._streams.get(stream)
        if pot is None:
            pot = StreamingPot(self._scores, risk=self._cfg.pot_risk, initial_quantile=self._cfg.pot_initial_quantile,
                               depth=self._cfg.dspot_depth, fallback_threshold=self._fallback)  # fmt: skip
            self._streams[stream] = pot
        return pot

    def judge(self, streams: Sequence[str], scores: npt.NDArray[np.float64]) -> Scores:
        """The live threshold each window (in stream order) is judged against; each then teaches its stream."""
        out = np.empty(len(scores), dtype=np.float64)
        for i, (stream, score) in enumerate(zip(streams, scores.tolist(), strict=True)):
            pot = self._pot(stream)
            out[i] = pot.threshold * self._cfg.margin
            pot.update(score / self._cfg.margin)
        return out


class TrackedThreshold:
    """One stream's threshold, raised while the stream's recent normal scores run above the calibration's median.

    The threshold is the bundle's times max(1, median of the last `windows` accepted scores / the calibration
    median): a stream that wanders to where every window scores twice as high as the calibration data (a level
    drift, an operating point the training data did not cover) needs twice the score to alert, while a sudden fault
    still stands out against the stream's own recent level. Flagged windows are not accepted, so a fault does not
    raise its own bar; a flagged run that lasts `settle_windows` is taken as the stream's new normal and accepted
    from then on (0 = never). The threshold never drops below the bundle's. Until `MIN_TRACKED` scores are
    accepted it is the bundle's.

        >>> tracked = TrackedThreshold(threshold=3.0, reference=1.0, windows=20, settle_windows=0)
        >>> [tracked.update(2.0) for _ in range(20)][-1], tracked.threshold
        (False, 6.0)
        >>> tracked.update(5.0), tracked.update(7.0)
        (False, True)
    """

    def __init__(self, *, threshold: float, reference: float, windows: int, settle_windows: int) -> None:
        self._base = threshold
        # A calibration median of 0 (a perfectly reconstructed channel) would make every ratio infinite.
        self._reference = max(reference, threshold * 1e-3, 1e-300)
        self._recent: deque[float] = deque(maxlen=windows)
        self._sorted: list[float] = []
        self._settle, self._run = settle_windows, 0

    @property
    def median(self) -> float | None:
        """The median of the accepted scores; None until there are `MIN_TRACKED` of them."""
        n = len(self._sorted)
        return None if n < MIN_TRACKED else 0.5 * (self._sorted[(n - 1) // 2] + self._sorted[n // 2])

    @property
    def threshold(self) -> float:
        median = self.median
        return self._base if median is None else self._base * max(1.0, median / self._reference)

    def seed(self, median: float) -> None:
        """Start from a saved median (a restart or a rebalance): as if the last `windows` scores had all been it;
        new scores replace it one by one."""
        if self._recent.maxlen is not None and math.isfinite(median):
            self._recent.clear()
            self._recent.extend([median] * self._recent.maxlen)
            self._sorted = list(self._recent)

    def update(self, score: float) -> bool:
        """Judge one live score against the current threshold, then learn from it if accepted; True = flagged."""
        flagged = score > self.threshold
        self._run = self._run + 1 if flagged else 0
        if not flagged or (self._settle and self._run >= self._settle):
            self._accept(score)
        return flagged

    def _accept(self, score: float) -> None:
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent[0])]
        self._recent.append(score)
        bisect.insort(self._sorted, score)


class TrackedThresholds(_PerStream):
    """One `TrackedThreshold` per stream of a bundle (`calibration.online = "track"`); same call as OnlineThresholds."""

    def __init__(self, calibration: Calibration, cfg: CalibrationConfig) -> None:
        self._threshold, self._cfg = calibration.threshold, cfg
        self._reference = calibration.reference_quantiles[N_REFERENCE_QUANTILES // 2]
        self._streams: dict[str, TrackedThreshold] = {}

    def threshold(self, stream: str) -> float:
        return self._tracked(stream).threshold

    def median(self, stream: str) -> float | None:
        """The stream's tracked median, to persist with its alert state."""
        tracked = self._streams.get(stream)
        return None if tracked is None else tracked.median

    def seed(self, stream: str, median: float) -> None:
        """Start the stream from its saved median (see TrackedThreshold.seed)."""
        self._tracked(stream).seed(median)

    def _tracked(self, stream: str) -> TrackedThreshold:
        tracked = self._streams.get(stream)
        if tracked is None:
            tracked = TrackedThreshold(threshold=self._threshold, reference=self._reference,
                                       windows=self._cfg.track_windows,
                                       settle_windows=self._cfg.track_settle_windows)  # fmt: skip
            self._streams[stream] = tracked
        return tracked

    def judge(self, streams: Sequence[str], scores: npt.NDArray[np.float64]) -> Scores:
        """The live threshold each window (in stream order) is judged against; each then teaches its stream."""
        out = np.empty(len(scores), dtype=np.float64)
        for i, (stream, score) in enumerate(zip(streams, scores.tolist(), strict=True)):
            tracked = self._tracked(stream)
            out[i] = tracked.threshold
            tracked.update(score)
        return out
