"""Stage 4 (model): the autoencoder networks, as pure `torch.nn.Module`s with no training code.

Every network takes flat float32 batches `(B, D)` with `D = T * G`, laid out row-major from `vector_shape = (T, G)`
(time steps, feature groups): `x.reshape(B, T, G)` recovers the window. Audio vectors are (5 frames, 128 mels),
sensor vectors (window_samples, channels). A network returns a `ModelOutput`; reconstructions are raw values (see
`training.output_activation` for mapping them back when the loss is BCE).

    >>> from ae_monitor.config import ModelConfig
    >>> model = build_model(ModelConfig(), (5, 128))
    >>> count_parameters(model)
    267912
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ae_monitor.config import ModelConfig

__all__ = [
    "Autoencoder",
    "Conv1dAutoencoder",
    "DenseAutoencoder",
    "InterpolationAutoencoder",
    "LstmAutoencoder",
    "ModelOutput",
    "VariationalAutoencoder",
    "build_model",
    "count_parameters",
]


class ModelOutput(NamedTuple):
    """What every network's forward pass returns."""

    reconstruction: torch.Tensor  # (B, D), raw values
    code: torch.Tensor  # (B, latent_dim); the VAE's is its mean
    mu: torch.Tensor | None = None  # VAE only
    logvar: torch.Tensor | None = None  # VAE only


class Autoencoder(nn.Module, ABC):
    """Base class: `encode` (B, D) -> (B, latent_dim), `decode` back to (B, D), `forward` -> ModelOutput."""

    def __init__(self, vector_shape: tuple[int, int]) -> None:
        super().__init__()
        steps, groups = vector_shape
        if steps <= 0 or groups <= 0:
            raise ValueError(
                f"vector_shape must be two positive sizes (time steps, feature groups), got {vector_shape}"
            )
        self.vector_shape = (steps, groups)
        self.input_dim = steps * groups

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, code: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> ModelOutput:
        code = self.encode(x)
        return ModelOutput(self.decode(code), code)


def _dense_layers(sizes: Sequence[int], batch_norm: bool) -> list[nn.Module]:
    """Linear (+ BatchNorm1d) + ReLU between each pair of consecutive sizes."""
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.ReLU())
    return layers


def _dense_decoder(cfg: ModelConfig, input_dim: int) -> nn.Sequential:
    sizes = [cfg.latent_dim, *reversed(cfg.hidden_units)]
    return nn.Sequential(*_dense_layers(sizes, cfg.batch_norm), nn.Linear(sizes[-1], input_dim))


class DenseAutoencoder(Autoencoder):
    """The DCASE Task 2 baseline: D -> hidden... -> latent -> reversed hidden -> D.

    The code layer is linear (the Keras baseline adds BatchNorm + ReLU to it) so that sparsity penalties on it mean
    something and codes compare across kinds; this costs the baseline's 16 BatchNorm weights and nothing else.
    """

    def __init__(self, cfg: ModelConfig, vector_shape: tuple[int, int]) -> None:
        super().__init__(vector_shape)
        sizes = [self.input_dim, *cfg.hidden_units]
        self.encoder = nn.Sequential(*_dense_layers(sizes, cfg.batch_norm), nn.Linear(sizes[-1], cfg.latent_dim))
        self.decoder = _dense_decoder(cfg, self.input_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # type: ignore[no-any-return]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)  # type: ignore[no-any-return]


class InterpolationAutoencoder(DenseAutoencoder):
    """The dense autoencoder with its centre time step hidden from the encoder: it interpolates that step from its
    neighbours and reconstructs the others (the "interpolation DNN" of DCASE 2020 entries). Same weights as "dense".

    A sound that is new only in its timing (a transient too early, too soft or missing) is predicted from context
    rather than copied through the bottleneck.
    """

    def __init__(self, cfg: ModelConfig, vector_shape: tuple[int, int]) -> None:
        super().__init__(cfg, vector_shape)
        steps, groups = self.vector_shape
        keep = torch.ones(steps, groups)
        keep[steps // 2] = 0.0
        self.keep: torch.Tensor
        self.register_buffer("keep", keep.reshape(-1), persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x * self.keep)  # type: ignore[no-any-return]


class VariationalAutoencoder(Autoencoder):
    """A dense VAE: samples the code in training mode and decodes the mean in eval mode, so scoring is deterministic."""

    def __init__(self, cfg: ModelConfig, vector_shape: tuple[int, int]) -> None:
        super().__init__(vector_shape)
        sizes = [self.input_dim, *cfg.hidden_units]
        self.body = nn.Sequential(*_dense_layers(sizes, cfg.batch_norm))
        self.mu_head = nn.Linear(sizes[-1], cfg.latent_dim)
        self.logvar_head = nn.Linear(sizes[-1], cfg.latent_dim)
        self.decoder = _dense_decoder(cfg, self.input_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu_head(self.body(x))  # type: ignore[no-any-return]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        hidden = self.body(x)
        mu, logvar = self.mu_head(hidden), self.logvar_head(hidden)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return ModelOutput(self.decode(z), mu, mu, logvar)


def _conv_out_length(length: int, kernel: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // 2 + 1


class Conv1dAutoencoder(Autoencoder):
    """Strided Conv1d over time (G channels in), a linear bottleneck, ConvTranspose1d back, cropped to exactly T."""

    def __init__(self, cfg: ModelConfig, vector_shape: tuple[int, int]) -> None:
        super().__init__(vector_shape)
        steps, groups = self.vector_shape
        channels = [groups, *cfg.conv_channels]
        kernel, padding = cfg.kernel_size, cfg.kernel_size // 2
        self.conv_encoder = nn.Sequential(*self._conv_layers(channels, kernel, padding, cfg.batch_norm, False))
        length = steps
        for _ in cfg.conv_channels:
            length = _conv_out_length(length, kernel, padding)
        self.encoded_shape = (channels[-1], length)
        flat = channels[-1] * length
        self.to_code = nn.Linear(flat, cfg.latent_dim)
        # A ReLU after the expansion keeps it from folding into the first transposed convolution (two linear maps).
        expand: list[nn.Module] = [nn.Linear(cfg.latent_dim, flat)] + ([nn.ReLU()] if cfg.conv_channels else [])
        self.from_code = nn.Sequential(*expand)
        self.conv_decoder = nn.Sequential(*self._conv_layers(channels[::-1], kernel, padding, cfg.batch_norm, True))

    @staticmethod
    def _conv_layers(
        channels: Sequence[int], kernel: int, padding: int, batch_norm: bool, transposed: bool
    ) -> list[nn.Module]:
        layers: list[nn.Module] = []
        last = len(channels) - 2
        for i, (c_in, c_out) in enumerate(pairwise(channels)):
            if transposed:
                # output_padding=1 makes each layer at least double the length, so cropping always suffices.
                layers.append(nn.ConvTranspose1d(c_in, c_out, kernel, stride=2, padding=padding, output_padding=1))
            else:
                layers.append(nn.Conv1d(c_in, c_out, kernel, stride=2, padding=padding))
            if transposed and i == last:
                break  # the output layer stays linear
            if batch_norm:
                layers.append(nn.BatchNorm1d(c_out))
            layers.append(nn.ReLU())
        return layers

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        steps, groups = self.vector_shape
        h = self.conv_encoder(x.reshape(-1, steps, groups).transpose(1, 2))
        return self.to_code(h.flatten(1))  # type: ignore[no-any-return]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        steps, _ = self.vector_shape
        h = self.from_code(code).reshape(-1, *self.encoded_shape)
        y = _fit_length(self.conv_decoder(h), steps)
        return y.transpose(1, 2).reshape(-1, self.input_dim)


def _fit_length(y: torch.Tensor, length: int) -> torch.Tensor:
    """Crop (or, defensively, edge-pad) the last axis of `y` to `length`."""
    if y.shape[-1] >= length:
        return y[..., :length]
    return F.pad(y, (0, length - y.shape[-1]), mode="replicate")


class LstmAutoencoder(Autoencoder):
    """Encoder LSTM's last hidden state -> linear code, repeated over T -> decoder LSTM -> linear to G per step."""

    def __init__(self, cfg: ModelConfig, vector_shape: tuple[int, int]) -> None:
        super().__init__(vector_shape)
        _, groups = self.vector_shape
        hidden, layers = cfg.lstm_hidden_size, cfg.lstm_layers
        self.encoder_lstm = nn.LSTM(groups, hidden, layers, batch_first=True)
        self.to_code = nn.Linear(hidden, cfg.latent_dim)
        self.decoder_lstm = nn.LSTM(cfg.latent_dim, hidden, layers, batch_first=True)
        self.output = nn.Linear(hidden, groups)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.encoder_lstm(x.reshape(-1, *self.vector_shape))
        return self.to_code(h_n[-1])  # type: ignore[no-any-return]

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        steps, _ = self.vector_shape
        y, _ = self.decoder_lstm(code.unsqueeze(1).repeat(1, steps, 1))
        return self.output(y).reshape(-1, self.input_dim)  # type: ignore[no-any-return]


_BUILDERS: dict[str, Callable[[ModelConfig, tuple[int, int]], Autoencoder]] = {
    "dense": DenseAutoencoder,
    "conv1d": Conv1dAutoencoder,
    "lstm": LstmAutoencoder,
    "vae": VariationalAutoencoder,
    "interp": InterpolationAutoencoder,
}


def build_model(cfg: ModelConfig, vector_shape: tuple[int, int]) -> Autoencoder:
    """A freshly initialised network of kind `cfg.kind` for vectors of `vector_shape` = (time steps, groups).

    Initialisation draws from torch's global RNG: call `training.seed_everything` first for reproducible weights.
    """
    return _BUILDERS[cfg.kind](cfg, vector_shape)


def count_parameters(model: nn.Module) -> int:
    """The number of trainable weights (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
