"""Stage 4 (model): the autoencoder networks (pure nn.Module) and their training loop.

`networks` builds a network from `ModelConfig` for vectors of shape (time steps, feature groups), flattened to D;
`training` fits it to normal vectors and owns the losses scoring must agree with (`output_activation`,
`reconstruction_loss`, `kl_divergence`); `bundle` stores a trained model; `onnx` its exported scoring graph.

The names below are loaded on first use: importing `ae_monitor.model.bundle` (as serve does) runs this file, and a
daemon scoring with the onnx backend must not import torch through it (docs/footprint.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ae_monitor.model.networks import (
        Autoencoder,
        Conv1dAutoencoder,
        DenseAutoencoder,
        LstmAutoencoder,
        ModelOutput,
        VariationalAutoencoder,
        build_model,
        count_parameters,
    )
    from ae_monitor.model.training import (
        LossKind,
        TrainResult,
        corrupt,
        evaluate_loss,
        kl_divergence,
        output_activation,
        reconstruction_loss,
        resolve_device,
        seed_everything,
        sparsity_penalty,
        train_model,
        training_loss,
    )

_HOMES = {
    "ae_monitor.model.networks": ("Autoencoder", "Conv1dAutoencoder", "DenseAutoencoder", "LstmAutoencoder",
                                  "ModelOutput", "VariationalAutoencoder", "build_model", "count_parameters"),
    "ae_monitor.model.training": ("LossKind", "TrainResult", "corrupt", "evaluate_loss", "kl_divergence",
                                  "output_activation", "reconstruction_loss", "resolve_device", "seed_everything",
                                  "sparsity_penalty", "train_model", "training_loss"),
}  # fmt: skip
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "Autoencoder",
    "Conv1dAutoencoder",
    "DenseAutoencoder",
    "LossKind",
    "LstmAutoencoder",
    "ModelOutput",
    "TrainResult",
    "VariationalAutoencoder",
    "build_model",
    "corrupt",
    "count_parameters",
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


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME_OF[name]), name)
