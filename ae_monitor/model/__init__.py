"""Stage 4 (model): the autoencoder networks (pure nn.Modules) and their training loop.

`networks` builds a network from `ModelConfig` for vectors of shape (time steps, feature groups), flattened to D;
`training` fits it to normal vectors and owns the losses scoring must agree with (`output_activation`,
`reconstruction_loss`, `kl_divergence`).
"""

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
