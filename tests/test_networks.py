"""Stage 4 (model): the networks' shapes, sizes and modes, without training."""

from __future__ import annotations

import pytest
import torch

from ae_monitor.config import ModelConfig
from ae_monitor.model import Autoencoder, ModelOutput, build_model, count_parameters

KINDS = ["dense", "conv1d", "lstm", "vae"]
# Sensor windows (60 samples, 8 channels), DCASE audio vectors (5 frames, 128 mels), a short window.
SHAPES = [(60, 8), (5, 128), (16, 8)]


def _forward(model: Autoencoder, x: torch.Tensor) -> ModelOutput:
    out: ModelOutput = model(x)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}xG{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reconstructs_the_flat_input_shape_and_codes_to_latent_dim(
    kind: str, shape: tuple[int, int]
) -> None:
    model = build_model(ModelConfig(kind=kind, latent_dim=6), shape)
    x = torch.randn(4, shape[0] * shape[1])
    out = _forward(model, x)
    assert out.reconstruction.shape == x.shape
    assert out.code.shape == (4, 6)
    assert model.encode(x).shape == (4, 6)
    assert model.decode(out.code).shape == x.shape
    assert model.vector_shape == shape
    assert model.input_dim == x.shape[1]


@pytest.mark.parametrize("kind", ["dense", "conv1d", "lstm"])
def test_deterministic_kinds_return_no_mu_or_logvar(kind: str) -> None:
    out = _forward(build_model(ModelConfig(kind=kind), (16, 8)), torch.randn(3, 128))
    assert out.mu is None
    assert out.logvar is None


def test_vae_returns_mu_as_the_code_and_logvar() -> None:
    model = build_model(ModelConfig(kind="vae", latent_dim=5), (16, 8)).eval()
    out = _forward(model, torch.randn(3, 128))
    assert out.mu is not None
    assert out.logvar is not None
    assert out.logvar.shape == (3, 5)
    assert torch.equal(out.code, out.mu)


@pytest.mark.parametrize("steps", [16, 17, 60, 61, 120])
@pytest.mark.parametrize("kernel_size", [3, 4, 7])
def test_conv1d_output_is_exactly_t_long_for_any_window_and_kernel(steps: int, kernel_size: int) -> None:
    model = build_model(ModelConfig(kind="conv1d", kernel_size=kernel_size), (steps, 8))
    assert _forward(model, torch.randn(2, steps * 8)).reconstruction.shape == (2, steps * 8)


def test_conv1d_without_conv_layers_is_a_linear_bottleneck() -> None:
    model = build_model(ModelConfig(kind="conv1d", conv_channels=()), (16, 8))
    assert _forward(model, torch.randn(2, 128)).reconstruction.shape == (2, 128)


def test_dense_default_is_the_dcase_baseline_of_about_266k_weights() -> None:
    model = build_model(ModelConfig(), (5, 128))
    assert abs(count_parameters(model) - 266_000) / 266_000 < 0.01


def test_dense_without_batch_norm_has_no_batch_norm_layers() -> None:
    model = build_model(ModelConfig(batch_norm=False), (5, 128))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


def test_count_parameters_skips_frozen_weights() -> None:
    model = build_model(ModelConfig(), (5, 128))
    total = count_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    assert total > 0
    assert count_parameters(model) == 0


def test_vae_is_deterministic_in_eval_mode() -> None:
    model = build_model(ModelConfig(kind="vae"), (16, 8)).eval()
    x = torch.randn(8, 128)
    assert torch.equal(_forward(model, x).reconstruction, _forward(model, x).reconstruction)


def test_vae_samples_the_code_in_train_mode() -> None:
    model = build_model(ModelConfig(kind="vae"), (16, 8)).train()
    x = torch.randn(8, 128)
    first, second = _forward(model, x), _forward(model, x)
    assert first.mu is not None
    assert second.mu is not None
    assert torch.equal(first.mu, second.mu)
    assert not torch.equal(first.reconstruction, second.reconstruction)


def test_non_positive_vector_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="vector_shape"):
        build_model(ModelConfig(), (0, 8))


def test_the_interpolation_kind_never_sees_the_centre_frame_of_its_input() -> None:
    model = build_model(ModelConfig(kind="interp"), (5, 128)).eval()
    x = torch.randn(3, 640)
    changed = x.clone()
    changed[:, 2 * 128 : 3 * 128] = torch.randn(3, 128)  # frame 2 of 5 is the centre
    torch.testing.assert_close(model.encode(changed), model.encode(x))
    assert not torch.allclose(model.encode(x[:, torch.randperm(640)]), model.encode(x))


def test_the_interpolation_kind_has_exactly_the_dense_weights() -> None:
    dense, interp = build_model(ModelConfig(), (5, 128)), build_model(ModelConfig(kind="interp"), (5, 128))
    assert dense.state_dict().keys() == interp.state_dict().keys()
    assert count_parameters(interp) == count_parameters(dense)
