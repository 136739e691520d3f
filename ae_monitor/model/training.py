"""Stage 4 (model): training an autoencoder on normal vectors, with the losses scoring needs to agree with.

Objective, per input value so that weights mean the same at any D:
    reconstruction_loss(model(corrupt(x)), x)                  # against the CLEAN x
    + vae_beta * mean_B(KL(q(z|x) || N(0, I))) / D             # VAE only
    + sparsity_penalty(code)                                   # cfg.sparsity 'l1' or 'kl'
Networks output raw values: with loss 'mse' they are the reconstruction; with 'bce' they are logits and
`output_activation('bce')` (a sigmoid) maps them to the [0, 1] reconstruction.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ae_monitor.config import ModelConfig, TrainingConfig
from ae_monitor.errors import ConfigError, DataError
from ae_monitor.model.networks import Autoencoder, ModelOutput

__all__ = [
    "EpochCallback",
    "LossKind",
    "TrainResult",
    "corrupt",
    "evaluate_loss",
    "kl_divergence",
    "output_activation",
    "reconstruction_loss",
    "resolve_device",
    "seed_everything",
    "sparsity_penalty",
    "train_model",
    "training_loss",
]

logger = logging.getLogger(__name__)

LossKind = Literal["mse", "bce"]
EpochCallback = Callable[[int, float, float | None], None]

_EVAL_BATCH = 4096
# Improvements smaller than this (relative) do not reset patience, so float jitter on a plateau cannot keep it going.
_MIN_RELATIVE_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """How training went. Epochs count from 1; `best_val_loss` is the training loss when there was no validation."""

    best_epoch: int
    epochs_run: int
    train_loss: list[float]
    val_loss: list[float]
    best_val_loss: float
    stopped_early: bool
    seconds: float


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def output_activation(loss: LossKind) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps raw network outputs to reconstructions in input units: sigmoid for 'bce', identity for 'mse'."""
    if loss == "bce":
        return torch.sigmoid
    if loss == "mse":
        return _identity
    # Callers holding a plain str get an error rather than a silently wrong (identity) mapping.
    raise ValueError(f"unknown loss {loss!r}; expected 'mse' or 'bce'")


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Mean over all values. 'bce' is BCE(sigmoid(x_hat), x) for x in [0, 1], computed the numerically stable way."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(x_hat, x)
    return F.mse_loss(x_hat, x)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-vector KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions: shape (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def sparsity_penalty(code: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """`sparsity_weight` times: 'l1' the mean |code|; 'kl' the summed KL(target || mean sigmoid(code)) per unit."""
    if cfg.sparsity == "l1":
        return cfg.sparsity_weight * code.abs().mean()
    if cfg.sparsity == "kl":
        return cfg.sparsity_weight * _kl_sparsity(code, cfg.sparsity_target)
    return code.new_zeros(())


def _kl_sparsity(code: torch.Tensor, target: float) -> torch.Tensor:
    # Clamped so a unit that is always off (or on) gives a large, finite penalty rather than inf.
    rho_hat = torch.sigmoid(code).mean(dim=0).clamp(1e-6, 1 - 1e-6)
    kl = target * torch.log(target / rho_hat) + (1 - target) * torch.log((1 - target) / (1 - rho_hat))
    return kl.sum()


def corrupt(x: torch.Tensor, cfg: TrainingConfig, generator: torch.Generator) -> torch.Tensor:
    """Denoising input: 'gaussian' adds N(0, noise_level²); 'masking' zeroes a noise_level fraction; 'none' is x."""
    if cfg.denoising == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        return x + cfg.noise_level * noise.to(x.device)
    if cfg.denoising == "masking":
        keep = torch.rand(x.shape, generator=generator, device=generator.device) >= cfg.noise_level
        return x * keep.to(x.device)
    return x


def _objective(
    model: Autoencoder, x_in: torch.Tensor, x: torch.Tensor, model_cfg: ModelConfig, loss: LossKind
) -> torch.Tensor:
    out: ModelOutput = model(x_in)
    total = reconstruction_loss(out.reconstruction, x, loss) + sparsity_penalty(out.code, model_cfg)
    if out.mu is not None and out.logvar is not None:
        total = total + model_cfg.vae_beta * kl_divergence(out.mu, out.logvar).mean() / x.shape[1]
    return total


def training_loss(
    model: Autoencoder,
    x_clean: torch.Tensor,
    cfg_model: ModelConfig,
    cfg_train: TrainingConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The scalar objective for one batch: corrupt, forward, compare with the clean batch, add the penalties."""
    return _objective(model, corrupt(x_clean, cfg_train, generator), x_clean, cfg_model, cfg_train.loss)


@torch.no_grad()
def _evaluate(model: Autoencoder, x: torch.Tensor, model_cfg: ModelConfig, loss: LossKind) -> float:
    """The objective on clean inputs in eval mode, weighted by batch size."""
    model.eval()
    total = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], _EVAL_BATCH):
        batch = x[start : start + _EVAL_BATCH]
        total += _objective(model, batch, batch, model_cfg, loss) * batch.shape[0]
    return float(total) / x.shape[0]


def evaluate_loss(
    model: Autoencoder, data: npt.NDArray[np.floating], *, model_cfg: ModelConfig, cfg: TrainingConfig
) -> float:
    """The loss `train_model` monitors (clean inputs, eval mode) for `data` (N, D); leaves the model in eval mode."""
    device = next(model.parameters()).device
    return _evaluate(model, _as_tensor(data, device), model_cfg, cfg.loss)


def resolve_device(cfg: TrainingConfig) -> torch.device:
    """'cpu'; 'cuda' (ConfigError on training.device when there is none); 'auto' picks cuda when available."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if cfg.device == "cuda":
        raise ConfigError(
            "CUDA was requested but torch sees no CUDA device; use 'cpu' or 'auto'", key="training.device"
        )
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global RNGs (torch's covers CUDA too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_tensor(data: npt.NDArray[np.floating], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)


def _check_data(name: str, data: npt.NDArray[np.floating], input_dim: int) -> None:
    if data.ndim != 2 or data.shape[1] != input_dim:
        raise DataError(f"{name} vectors have shape {data.shape}, but the model expects (N, {input_dim})")
    if not np.isfinite(data).all():
        raise DataError(f"{name} vectors contain NaN or infinite values; fix the features or the NaN policy")


def _check_inputs(
    model: Autoencoder,
    train: npt.NDArray[np.floating],
    validation: npt.NDArray[np.floating] | None,
    cfg: TrainingConfig,
) -> None:
    _check_data("training", train, model.input_dim)
    if train.shape[0] < 2:
        raise DataError(f"training needs at least 2 vectors, got {train.shape[0]}")
    if validation is not None and len(validation):
        _check_data("validation", validation, model.input_dim)
    if cfg.loss == "bce" and (train.min() < 0 or train.max() > 1):
        raise DataError("loss 'bce' needs training vectors scaled to [0, 1] (e.g. sensor scaling 'minmax')")
    if cfg.denoising == "masking" and cfg.noise_level > 1:
        raise ConfigError("masking needs a fraction in [0, 1]", key="training.noise_level")


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A fresh shuffled split of range(n) into mini-batches."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # BatchNorm cannot train on one vector; reshuffling means no vector is always left out
    return batches


def _train_epoch(
    model: Autoencoder,
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    model_cfg: ModelConfig,
    cfg: TrainingConfig,
    generator: torch.Generator,
) -> float:
    model.train()
    total, seen = torch.zeros((), device=x.device), 0
    for idx in _batches(x.shape[0], cfg.batch_size, generator):
        loss = training_loss(model, x[idx], model_cfg, cfg, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.detach() * len(idx)  # summed on the device: one sync per epoch, not per batch
        seen += len(idx)
    return float(total) / seen


class _EarlyStopping:
    """Tracks the best monitored loss and its weights; `step` says whether patience has run out."""

    def __init__(self, model: Autoencoder, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best_loss, self.best_epoch, self.waited = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] = {}

    def step(self, epoch: int, loss: float) -> bool:
        if loss < self.best_loss - abs(self.best_loss) * _MIN_RELATIVE_IMPROVEMENT or not self.best_state:
            self.best_loss, self.best_epoch, self.waited = loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        self.waited += 1
        return 0 < self.patience <= self.waited

    def restore(self) -> None:
        self.model.load_state_dict(self.best_state)


def _report(bar: tqdm[int], show: bool, epoch: int, train_loss: float, val_loss: float | None) -> None:
    if show:
        bar.set_postfix(loss=f"{train_loss:.5g}", val_loss="-" if val_loss is None else f"{val_loss:.5g}")
    else:
        logger.info(
            "epoch %d: loss %.6g, val_loss %s", epoch, train_loss, "-" if val_loss is None else f"{val_loss:.6g}"
        )


def train_model(
    model: Autoencoder,
    train: npt.NDArray[np.floating],
    validation: npt.NDArray[np.floating] | None,
    *,
    model_cfg: ModelConfig,
    cfg: TrainingConfig,
    progress: bool | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Trains `model` in place on `train` (N, D) with Adam and returns how it went.

    Early stopping watches the validation loss (the training loss when `validation` is None or empty) and the best
    epoch's weights are restored. The model is returned in eval mode on the CPU. `progress` shows a tqdm bar (None:
    when stderr is a terminal); otherwise each epoch is logged at INFO. `on_epoch(epoch, train_loss, val_loss)` is
    called after each epoch. Side effects: sets torch's thread count to `cfg.torch_threads` and reseeds the global
    RNGs with `cfg.seed` (the VAE samples from them); seed before `build_model` too for reproducible weights.
    """
    started = time.perf_counter()
    _check_inputs(model, train, validation, cfg)
    torch.set_num_threads(cfg.torch_threads)  # torch's default (all cores) is several times slower for small nets
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    model.to(device)
    x_train = _as_tensor(train, device)
    x_val = _as_tensor(validation, device) if validation is not None and len(validation) else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    stopper = _EarlyStopping(model, cfg.early_stopping_patience)
    train_losses: list[float] = []
    val_losses: list[float] = []
    show = sys.stderr.isatty() if progress is None else progress
    stopped_early = False
    epochs, least_epochs = epochs_for(x_train.shape[0], cfg)
    with tqdm(range(1, epochs + 1), desc="training", unit="epoch", disable=not show, file=sys.stderr) as bar:
        for epoch in bar:
            train_loss = _train_epoch(model, x_train, optimizer, model_cfg, cfg, generator)
            val_loss = _evaluate(model, x_val, model_cfg, cfg.loss) if x_val is not None else None
            _check_finite(epoch, train_loss, val_loss)
            train_losses.append(train_loss)
            if val_loss is not None:
                val_losses.append(val_loss)
            _report(bar, show, epoch, train_loss, val_loss)
            if on_epoch is not None:
                on_epoch(epoch, train_loss, val_loss)
            if stopper.step(epoch, train_loss if val_loss is None else val_loss) and epoch >= least_epochs:
                stopped_early = True
                break
    stopper.restore()
    model.to("cpu").eval()
    return TrainResult(
        best_epoch=stopper.best_epoch,
        epochs_run=len(train_losses),
        train_loss=train_losses,
        val_loss=val_losses,
        best_val_loss=stopper.best_loss,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
    )


def epochs_for(n_vectors: int, cfg: TrainingConfig) -> tuple[int, int]:
    """(epochs to run at most, epochs before early stopping may stop): `cfg.epochs`, raised so that at least
    `cfg.min_steps` optimizer steps are taken. A few hundred vectors make an epoch of a handful of steps, and a
    small, noisy validation part would otherwise stop the network while it still reconstructs little more than the
    mean (a stream learned from its first minutes is exactly that case).

    >>> epochs_for(200, TrainingConfig(epochs=30, batch_size=64, min_steps=1000))
    (250, 250)
    >>> epochs_for(50_000, TrainingConfig(epochs=30, batch_size=64, min_steps=1000))
    (30, 2)
    """
    per_epoch = max(1, math.ceil(n_vectors / cfg.batch_size))
    least = math.ceil(cfg.min_steps / per_epoch)
    return max(cfg.epochs, least), least


def _check_finite(epoch: int, train_loss: float, val_loss: float | None) -> None:
    if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
        raise DataError(
            f"training diverged at epoch {epoch} (loss {train_loss}, val_loss {val_loss}); "
            "lower training.learning_rate or check the feature scaling"
        )
