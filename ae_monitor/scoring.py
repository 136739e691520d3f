"""Stage 5, score: batched reconstruction error per vector, per-group error shares, and windows of vectors.

A vector's score is its mean squared reconstruction error (the DCASE score; over its last `recent_steps` time steps
only when the calibration says so), or, for a bundle calibrated with
aggregation "max", the largest over groups of each group's mean squared error divided by that group's calibration
scale (`group_scores`): a spike on one channel of forty is not averaged away. A window's score is the mean over
its vectors (or, with a window statistic, band_statistic.py, that mean and the window's band statistic on one scale,
the larger of the two). Each window also carries every feature group's share of the squared error (mel bands for audio,
channels for sensors), which is what alerts use to name the top contributors. Higher score = more anomalous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ae_monitor.band_statistic import BandMeanZ, band_means_of
from ae_monitor.config import FeaturesConfig, ModelConfig
from ae_monitor.errors import BundleError
from ae_monitor.model.bundle import Bundle, linear_monitor
from ae_monitor.model.linear import LinearMonitor
from ae_monitor.model.onnx import OnnxNetwork

if TYPE_CHECKING:
    # Imported where used: with scoring.backend "onnx" the daemon never imports torch (docs/footprint.md).
    import torch

    from ae_monitor.model.networks import Autoencoder, ModelOutput
    from ae_monitor.model.training import LossKind

F64 = npt.NDArray[np.float64]
Positions = npt.NDArray[np.float64] | npt.NDArray[np.int64]


@dataclass(frozen=True)
class VectorScores:
    """Scores of N vectors: `errors` (N,) and the squared error summed per feature group, `group_errors` (N, G).

    With a window statistic, also each vector's mean feature value per group, `band_means` (N, G), and the fitted
    `statistic` that turns them into window scores: it travels with the scores, so every window aggregator (offline,
    per stream, in calibration) forms windows as the scorer's bundle says.

    `contributions` (N, G), when set, is what each group contributed to the vector's score, which the windows'
    shares (an alert's top contributors) are formed from instead of the raw `group_errors`: with "max" aggregation
    each group's error over its calibration scale, and where the linear monitor decided the score, its per-channel
    share of that term (model.linear.LinearMonitor.channel_terms).
    """

    errors: F64
    group_errors: F64
    band_means: F64 | None = None
    statistic: BandMeanZ | None = None
    contributions: F64 | None = None

    def __len__(self) -> int:
        return int(self.errors.shape[0])

    @property
    def share_basis(self) -> F64:
        """Per vector and group, what the windows' shares are formed from."""
        return self.group_errors if self.contributions is None else self.contributions

    def slice(self, start: int, stop: int) -> VectorScores:
        means = None if self.band_means is None else self.band_means[start:stop]
        parts = None if self.contributions is None else self.contributions[start:stop]
        return VectorScores(self.errors[start:stop], self.group_errors[start:stop], means, self.statistic, parts)

    def window_score(self, start: int, stop: int) -> float:
        """The score of the window of vectors [start, stop): their mean error, joined with their band statistic
        when there is one."""
        error = float(self.errors[start:stop].mean())
        if self.statistic is None or self.band_means is None:
            return error
        return self.statistic.score(error, self.band_means[start:stop].mean(axis=0))

    def with_statistic(self, statistic: BandMeanZ, data: npt.NDArray[np.floating],
                       vector_shape: tuple[int, int]) -> VectorScores:  # fmt: skip
        """These scores, with `data`'s band means (the vectors scored, (N, T*G)) and `statistic`."""
        return VectorScores(self.errors, self.group_errors, band_means_of(data, vector_shape), statistic,
                            self.contributions)  # fmt: skip


@dataclass(frozen=True)
class ScoreForm:
    """How scores are formed from squared errors, as a bundle's calibration records it (every backend the same):
    `aggregation` "mean" or "max" over groups scaled by `group_scale`, the newest `recent_steps` steps (0 = all),
    an audio window `statistic` and a sensor `linear` monitor beside the errors (None = none)."""

    aggregation: str = "mean"
    group_scale: Sequence[float] | None = None
    recent_steps: int = 0
    statistic: BandMeanZ | None = None
    linear: LinearMonitor | None = None


class Scorer:
    """Scores flat feature vectors with a trained autoencoder in batches, without gradients."""

    def __init__(
        self,
        model: Autoencoder,
        *,
        vector_shape: tuple[int, int],
        model_config: ModelConfig,
        loss: LossKind = "mse",
        batch_size: int = 1024,
        form: ScoreForm = ScoreForm(),
    ) -> None:
        from ae_monitor.model.training import output_activation

        self._set_score_form(vector_shape, form)
        self._model = model.eval()
        self._elbo = model_config.kind == "vae" and model_config.vae_score == "elbo"
        self._beta = model_config.vae_beta
        self._activation: Callable[[torch.Tensor], torch.Tensor] = output_activation(loss)
        self._batch_size = batch_size

    def score(self, data: npt.NDArray[np.float32]) -> VectorScores:
        """Score `data` of shape (N, T*G). Empty input gives empty scores."""
        parts = [self._score_batch(data[i : i + self._batch_size]) for i in range(0, len(data), self._batch_size)]
        if not parts:
            return VectorScores(np.zeros(0), np.zeros((0, self._shape[1])))
        return self._formed(data, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def score_output(self, data: npt.NDArray[np.float32], output: ModelOutput) -> VectorScores:
        """What `score(data)` gives, from the network's `output` for `data` computed elsewhere (engine/grouped.py
        runs the networks of many slots in one call); the scores are formed here as in `score`."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
            errors, groups = self._squared_errors(x, output)
        return self._formed(data, errors, groups)

    def _formed(self, data: npt.NDArray[np.float32], errors: F64, groups: F64) -> VectorScores:
        """The scores of `data` from each vector's mean squared error and its squared error summed per group."""
        contributions = None
        if self._aggregation == "max" and self._group_scale is not None:
            contributions = scaled_group_errors(groups, self.scored_steps, self._group_scale)
            errors = contributions.max(axis=1) if len(contributions) else np.zeros(0)
            if self._linear is not None:
                errors, contributions = self._with_linear(data, errors, contributions)
        scores = VectorScores(errors, groups, contributions=contributions)
        return scores if self._statistic is None else scores.with_statistic(self._statistic, data, self._shape)

    def _with_linear(self, data: npt.NDArray[np.float32], errors: F64, contributions: F64) -> tuple[F64, F64]:
        """Scores joined with the linear monitor's; where it decides, the contributions are its channels' shares of
        its term, scaled to the score (so that an alert names the channels that moved the term, not the network's)."""
        assert self._linear is not None
        terms = self._linear.vector_terms(data, self._shape, self._first_step)
        linear = self._linear.scaled_max(terms)
        decided = linear > errors
        if decided.any():
            parts = self._linear.channel_terms(data[decided], self._shape, self._first_step, terms[decided])
            totals = parts.sum(axis=1, keepdims=True)
            contributions = contributions.copy()
            shares = np.divide(parts, totals, out=np.zeros_like(parts), where=totals > 0)
            contributions[decided] = shares * linear[decided, np.newaxis]
        return np.maximum(errors, linear), contributions

    def _set_score_form(self, vector_shape: tuple[int, int], form: ScoreForm) -> None:
        """How scores are formed from squared errors (shared by every backend); checked here."""
        aggregation, group_scale, recent_steps = form.aggregation, form.group_scale, form.recent_steps
        statistic, linear = form.statistic, form.linear
        if aggregation == "max" and (group_scale is None or len(group_scale) != vector_shape[1]):
            raise ValueError(f"aggregation 'max' needs one group scale per group ({vector_shape[1]})")
        if statistic is not None and len(statistic.band_mean) != vector_shape[1]:
            raise ValueError(f"the window statistic needs one band mean per group ({vector_shape[1]})")
        if linear is not None and (aggregation != "max" or len(linear.mean) != vector_shape[1] or not linear.scales):
            raise ValueError(f"a linear monitor needs aggregation 'max' and scales for {vector_shape[1]} groups")
        self._statistic, self._linear = statistic, linear
        if not 0 <= recent_steps <= vector_shape[0]:
            raise ValueError(f"recent_steps must be in [0, {vector_shape[0]}] (the vector's steps), got {recent_steps}")
        self._shape, self._aggregation = vector_shape, aggregation
        self._group_scale = None if group_scale is None else np.asarray(group_scale, dtype=np.float64)
        # Only the last `recent_steps` time steps of each vector are scored (0 = all): see CalibrationConfig.
        self._first_step = vector_shape[0] - recent_steps if recent_steps else 0

    @property
    def scored_steps(self) -> int:
        """How many time steps of each vector its score covers."""
        return self._shape[0] - self._first_step

    def encode(self, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Latent codes of `data` (N, T*G) -> (N, latent); a VAE gives its mean."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
            return self._model.encode(x).float().numpy()

    def reconstruct(self, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The network's reconstruction of `data` (N, T*G), in feature units."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
            return self._activation(self._model(x).reconstruction).float().numpy()

    def _score_batch(self, batch: npt.NDArray[np.float32]) -> tuple[F64, F64]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            return self._squared_errors(x, self._model(x))

    def _squared_errors(self, x: torch.Tensor, out: ModelOutput) -> tuple[F64, F64]:
        """Per vector of `x`, its score's error (with the ELBO term of a VAE scored so) and the squared error
        summed per group, from the network's output `out`."""
        squared = (self._activation(out.reconstruction) - x).square().reshape(-1, *self._shape)
        squared = squared[:, self._first_step :, :]
        errors = squared.mean(dim=(1, 2))
        if self._elbo and out.mu is not None and out.logvar is not None:
            # Negative ELBO per value: reconstruction term plus the KL term spread over the D inputs.
            kl = -0.5 * (1 + out.logvar - out.mu.square() - out.logvar.exp()).sum(dim=1)
            errors = errors + self._beta * kl / x.shape[1]
        groups = squared.sum(dim=1)
        return errors.double().numpy(), groups.double().numpy()


class OnnxScorer(Scorer):
    """Scorer for scoring.backend "onnx": the bundle's exported graph (model/onnx.py) computes what `_score_batch`
    does in torch; batching and group aggregation are the same."""

    def __init__(
        self,
        network: OnnxNetwork,
        *,
        vector_shape: tuple[int, int],
        batch_size: int = 1024,
        form: ScoreForm = ScoreForm(),
    ) -> None:
        # Not Scorer.__init__: it sets up the torch network; the graph already holds the loss and score kind.
        self._set_score_form(vector_shape, form)
        self._batch_size, self._network = batch_size, network

    def encode(self, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._network.run(data)[2]

    def reconstruct(self, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._network.run(data)[3]

    def _score_batch(self, batch: npt.NDArray[np.float32]) -> tuple[F64, F64]:
        if not self._first_step:
            errors, groups = self._network.score(batch)
            return errors.astype(np.float64), groups.astype(np.float64)
        # The graph scores every step; with recent_steps the newest steps' errors replace the all-step mean (any
        # ELBO term the graph added stays, as in Scorer._score_batch).
        errors, groups, _, reconstruction = self._network.run(batch)
        squared = np.square(reconstruction.astype(np.float64) - batch).reshape(-1, *self._shape)
        recent = squared[:, self._first_step :, :]
        errors = errors.astype(np.float64) - squared.mean(axis=(1, 2)) + recent.mean(axis=(1, 2))
        return errors, recent.sum(axis=1)


def scorer_for(bundle: Bundle, *, batch_size: int = 1024, recent_steps: int | None = None) -> Scorer:
    """The scorer of a loaded bundle: its network, vector shape, loss, score kind, group aggregation and scored
    steps (`recent_steps` overrides the calibration's: calibration itself scores before it has a record)."""
    cal = bundle.calibration
    if recent_steps is None:
        recent_steps = 0 if cal is None else cal.recent_steps
    if recent_steps > bundle.extractor.vector_shape[0]:
        raise BundleError(
            f"{recent_steps} recent steps, but a vector holds {bundle.extractor.vector_shape[0]}",
            field="calibration.recent_steps",
        )
    form = ScoreForm(
        aggregation="mean" if cal is None else cal.aggregation,
        group_scale=None if cal is None else cal.group_scale,
        recent_steps=recent_steps,
        statistic=window_statistic_of(bundle),
        linear=linear_monitor(cal, groups=bundle.extractor.vector_shape[1]),
    )
    if bundle.onnx is not None:  # loaded with backend "onnx" (model.bundle.load_bundle)
        return OnnxScorer(bundle.onnx, vector_shape=bundle.extractor.vector_shape, batch_size=batch_size, form=form)
    return Scorer(bundle.network, vector_shape=bundle.extractor.vector_shape, model_config=bundle.model_config,
                  loss=bundle.training.loss, batch_size=batch_size, form=form)  # fmt: skip


def window_statistic_of(bundle: Bundle) -> BandMeanZ | None:
    """The bundle's fitted window statistic (None: windows score the mean error, as every bundle before it)."""
    cal = bundle.calibration
    if cal is None or cal.window_statistic is None:
        return None
    try:
        statistic = BandMeanZ.from_dict(cal.window_statistic)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"unusable: {exc}", field="calibration.window_statistic") from exc
    if bundle.features.kind != "logmel":
        raise BundleError("a window statistic needs audio features (a sensor vector is its own window)",
                          field="calibration.window_statistic")  # fmt: skip
    if len(statistic.band_mean) != bundle.extractor.vector_shape[1]:
        raise BundleError(
            f"{len(statistic.band_mean)} band means, but a vector has {bundle.extractor.vector_shape[1]} groups",
            field="calibration.window_statistic",
        )
    return statistic


def group_scores(group_errors: F64, steps: int, group_scale: npt.ArrayLike) -> F64:
    """Per vector, the largest over groups of (the group's summed squared error / `steps`) / its scale.

    >>> group_scores(np.array([[2.0, 8.0], [4.0, 0.0]]), 2, [1.0, 4.0])
    array([1., 2.])
    """
    normalised = scaled_group_errors(group_errors, steps, group_scale)
    return np.asarray(normalised.max(axis=1), dtype=np.float64) if len(normalised) else np.zeros(0)


def scaled_group_errors(group_errors: F64, steps: int, group_scale: npt.ArrayLike) -> F64:
    """Per vector and group, (the group's summed squared error / `steps`) / its scale: "max" aggregation's terms."""
    return np.asarray(group_errors / steps / np.asarray(group_scale, dtype=np.float64), dtype=np.float64)


def group_scale_of(group_errors: F64, steps: int, *, quantile: float) -> tuple[float, ...]:
    """Each group's calibration scale: the `quantile` of its per-vector mean squared error on normal data, floored
    at a millionth of the largest so that a channel the model reconstructs perfectly cannot divide by zero."""
    per_group = np.quantile(group_errors / steps, quantile, axis=0)
    floor = max(float(per_group.max()) * 1e-6, 1e-12)
    return tuple(float(v) for v in np.maximum(per_group, floor))


@dataclass(frozen=True)
class ScoredWindow:
    """A window of consecutive vectors of one stream: mean score, group shares, and where it starts and ends.

    `start` and `end` are in whatever positions the caller pushed: sample indices offline, epoch seconds live.
    """

    score: float
    contributions: tuple[float, ...]
    start: float
    end: float


def window_plan(features: FeaturesConfig) -> tuple[int, int]:
    """How many vectors make a scoring window, and how many vectors it hops."""
    if features.kind == "sensor":
        return 1, 1  # a sensor vector is already a window of `window_samples`
    cfg = features.logmel
    vectors_per_s = cfg.sample_rate_hz / cfg.hop_length
    return max(1, round(cfg.score_window_s * vectors_per_s)), max(1, round(cfg.score_hop_s * vectors_per_s))


def window_hop_s(features: FeaturesConfig) -> float:
    """Seconds of stream between consecutive windows (converts per-hour false-alarm targets to per-window risk)."""
    if features.kind == "sensor":
        return features.sensor.hop_samples * features.sensor.sample_period_s
    _, hop = window_plan(features)
    return hop * features.logmel.hop_length / features.logmel.sample_rate_hz


def shares(group_errors: F64) -> tuple[float, ...]:
    """Normalise summed group errors to shares that add up to 1 (all zero stays all zero)."""
    total = float(group_errors.sum())
    return tuple(float(v) for v in (group_errors / total if total > 0 else group_errors))


class WindowAggregator:
    """Per-stream incremental grouping of scored vectors into windows: window k = vectors [k*hop, k*hop + size).

    Pushing vectors in any chunking yields the same windows as pushing them all at once.
    """

    def __init__(self, size: int, hop: int) -> None:
        if hop > size:
            raise ValueError("hop must not exceed size")
        self._size, self._hop = size, hop
        self._pending: list[tuple[VectorScores, Positions, Positions]] = []

    def push(self, scores: VectorScores, first_sample: Positions, end_sample: Positions) -> list[ScoredWindow]:
        if len(scores) == 0:
            return []
        if self._size == 1:
            return _single_vector_windows(scores, first_sample, end_sample)
        self._pending.append((scores, first_sample, end_sample))
        merged, first, end = self._merge()
        starts = np.arange(0, len(merged) - self._size + 1, self._hop)
        windows = _windows(merged, first, end, starts, self._size)
        rest = int(starts[-1]) + self._hop if len(starts) else 0
        self._pending = [(merged.slice(rest, len(merged)), first[rest:], end[rest:])]
        return windows

    def _merge(self) -> tuple[VectorScores, Positions, Positions]:
        if len(self._pending) == 1:
            return self._pending[0]
        parts = [p[0] for p in self._pending]
        means = [p.band_means for p in parts if p.band_means is not None]
        contributions = [p.contributions for p in parts if p.contributions is not None]
        scores = VectorScores(
            np.concatenate([p.errors for p in parts]),
            np.concatenate([p.group_errors for p in parts]),
            np.concatenate(means) if len(means) == len(parts) else None,
            parts[-1].statistic,
            np.concatenate(contributions) if len(contributions) == len(parts) else None,
        )
        first = np.concatenate([p[1] for p in self._pending])
        end = np.concatenate([p[2] for p in self._pending])
        return scores, first, end


def _window_sums(rows: F64, starts: npt.NDArray[np.intp], size: int) -> F64:
    """Per window, the sum of its `size` rows of `rows` (N, G): the very sums (to the last bit) that
    `rows[lo:lo + size].sum(axis=0)` gives, which adds row after row (np.add.reduceat and cumulative sums add in
    another order)."""
    if len(starts) < size:  # a few windows (serve: a stream's new chunk): one sum each
        return np.array([rows[lo : lo + size].sum(axis=0) for lo in starts.tolist()])
    total = rows[starts]  # many windows (offline: a whole file): one step per row of a window; indexing copies
    for k in range(1, size):
        total += rows[starts + k]
    return total


def _windows(scores: VectorScores, first: Positions, end: Positions, starts: npt.NDArray[np.intp],
             size: int) -> list[ScoredWindow]:  # fmt: skip
    """The windows of `size` vectors starting at `starts`: what VectorScores.window_score and `shares` give for each
    (the same floating-point operations in the same order, so the same scores), vectorised over the windows."""
    if len(starts) == 0:
        return []
    # Each window's mean error: its vectors' errors as a row, summed (pairwise, as a slice's .mean() sums) / size.
    errors = scores.errors[starts[:, np.newaxis] + np.arange(size)].sum(axis=1) / size
    groups = _window_sums(scores.share_basis, starts, size)
    if scores.statistic is not None and scores.band_means is not None:
        band_means = _window_sums(scores.band_means, starts, size) / size
        statistic = scores.statistic
        terms = statistic.band_terms(band_means)  # the statistic is their mean
        by_error = errors / statistic.error_scale
        by_statistic = np.asarray(terms.mean(axis=-1), dtype=np.float64) / statistic.statistic_scale
        window_scores = np.maximum(by_error, by_statistic)
        # Where the band statistic decided, the bands named are those whose level moved: each band's squared z.
        decided = by_statistic > by_error
        groups[decided] = terms[decided]
    else:
        window_scores = errors
    totals = groups.sum(axis=1, keepdims=True)
    share_rows = np.divide(groups, totals, out=np.zeros_like(groups), where=totals > 0)
    return [
        ScoredWindow(score, tuple(share), start, stop)
        for score, share, start, stop in zip(
            window_scores.tolist(),
            share_rows.tolist(),
            first[starts].astype(float).tolist(),
            end[starts + size - 1].astype(float).tolist(),
            strict=True,
        )
    ]


def _single_vector_windows(scores: VectorScores, first: Positions, end: Positions) -> list[ScoredWindow]:
    """Each vector is its own window (sensors): the shares of all of them in one vectorised step."""
    basis = scores.share_basis
    totals = basis.sum(axis=1, keepdims=True)
    rows = np.divide(basis, totals, out=np.zeros_like(basis), where=totals > 0)
    return [
        ScoredWindow(score, tuple(share), start, stop)
        for score, share, start, stop in zip(
            scores.errors.tolist(),
            rows.tolist(),
            first.astype(float).tolist(),
            end.astype(float).tolist(),
            strict=True,
        )
    ]


def aggregate(scores: VectorScores, first: Positions, end: Positions, *, size: int, hop: int) -> list[ScoredWindow]:
    """Batch form of WindowAggregator. A sequence shorter than one window still gets one window over all of it."""
    windows = WindowAggregator(size, hop).push(scores, first, end)
    if not windows and len(scores) > 0:
        windows = WindowAggregator(len(scores), len(scores)).push(scores, first, end)
    return windows


# Beyond this many training standard deviations a channel is outside anything the model has seen: its score says
# "unlike training", not which fault, so it is reported on its own (issue 16: SKAB valve1 ran at z = -40 to -55).
OUT_OF_RANGE_Z = 10.0


@dataclass(frozen=True)
class OutOfRange:
    """A sensor channel whose values left the training range: the most extreme z, and where it happened."""

    channel: str
    z: float
    rows: int
    first_row: int

    def message(self) -> str:
        return (
            f"{self.channel} at z = {self.z:+.1f} ({self.rows} rows from row {self.first_row}): outside the range "
            "the model was trained on; its windows score high because they are unlike training, whatever the cause"
        )


def newest_z(bundle: Bundle, data: npt.NDArray[np.floating]) -> F64 | None:
    """Per sensor vector (N, T*G in feature units), each channel's newest sample in training standard deviations
    (N, G), as `out_of_range` measures it; None for audio bundles and windows of differences."""
    sensor = bundle.features.sensor
    if bundle.features.kind != "sensor" or sensor.differences or len(data) == 0:
        return None
    newest = np.asarray(data, dtype=np.float64).reshape(len(data), *bundle.extractor.vector_shape)[:, -1, :]
    # Standard scaling is already in standard deviations; min-max ranges span about four of them (see below).
    return newest if sensor.scaling == "standard" else newest * 4.0


def out_of_range(
    bundle: Bundle, samples: npt.NDArray[np.floating], *, limit: float = OUT_OF_RANGE_Z
) -> list[OutOfRange]:
    """Channels of raw sensor `samples` (n, C in the bundle's channel order) with |z| > `limit` under the bundle's
    training scaling; empty for audio bundles.
    """
    scaling = getattr(bundle.extractor, "scaling_arrays", None)
    if bundle.features.kind != "sensor" or scaling is None or len(samples) == 0:
        return []
    offset, scale, _ = scaling()
    if bundle.features.sensor.scaling != "standard":
        scale = scale / 4.0  # a min-max range spans about four standard deviations of a bell-shaped channel
    with np.errstate(invalid="ignore"):
        z = (np.asarray(samples, dtype=np.float64).reshape(len(samples), -1) - offset) / scale
    found = []
    for c, name in enumerate(bundle.extractor.group_names):
        beyond = np.flatnonzero(np.abs(np.nan_to_num(z[:, c])) > limit)
        if beyond.size:
            worst = int(beyond[np.argmax(np.abs(z[beyond, c]))])
            found.append(OutOfRange(name, float(z[worst, c]), int(beyond.size), int(beyond[0])))
    return found
