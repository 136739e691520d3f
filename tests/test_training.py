"""Stage 4 (model): training every kind on synthetic sensor windows, the losses, and the loop's guarantees."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from ae_monitor.config import ModelConfig, TrainingConfig
from ae_monitor.errors import ConfigError, DataError
from ae_monitor.model import (
    Autoencoder,
    ModelOutput,
    build_model,
    corrupt,
    evaluate_loss,
    output_activation,
    reconstruction_loss,
    resolve_device,
    seed_everything,
    sparsity_penalty,
    train_model,
    training_loss,
)
from ae_monitor.model.training import LossKind

Array = npt.NDArray[np.float32]

STEPS, CHANNELS = 24, 8
# Harmonics of one 48-sample cycle: every normal window lies on a closed one-dimensional curve.
PERIODS = np.array([48, 24, 16, 12, 48, 24, 16, 12], dtype=np.float64)
PHASES = np.arange(CHANNELS) * 0.7


def sinusoid_windows(n: int, seed: int) -> Array:
    """`n` flat (STEPS, CHANNELS) windows of 8 sinusoids with a little noise, at random points of the cycle."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 48, size=(n, 1, 1)) + np.arange(STEPS)[None, :, None]
    x = np.sin(2 * np.pi * t / PERIODS + PHASES) + 0.05 * rng.standard_normal((n, STEPS, CHANNELS))
    return x.reshape(n, STEPS * CHANNELS).astype(np.float32)


def inject_anomalies(windows: Array, seed: int) -> Array:
    """Cycles through three faults: a spike on one channel, a flat-lined channel, a window of pure noise."""
    rng = np.random.default_rng(seed)
    out = windows.reshape(-1, STEPS, CHANNELS).copy()
    for i, window in enumerate(out):
        channel, start = rng.integers(CHANNELS), rng.integers(STEPS - 3)
        if i % 3 == 0:
            window[start : start + 3, channel] += 4.0
        elif i % 3 == 1:
            window[:, channel] = window[0, channel]
        else:
            window[:] = rng.standard_normal(window.shape)
    return out.reshape(windows.shape)


@pytest.fixture(scope="module")
def data() -> dict[str, Array]:
    normal = sinusoid_windows(576, seed=1)
    return {
        "train": normal[:384],
        "validation": normal[384:448],
        "normal": normal[448:],
        "anomalous": inject_anomalies(normal[448:], seed=2),
    }


def fast_training(**overrides: Any) -> TrainingConfig:
    settings: dict[str, Any] = {"epochs": 30, "batch_size": 32, "learning_rate": 3e-3, "early_stopping_patience": 0}
    return TrainingConfig(**(settings | overrides))


def per_vector_mse(model: Autoencoder, x: Array, loss: LossKind = "mse") -> Array:
    with torch.no_grad():
        out: ModelOutput = model.eval()(torch.from_numpy(x))
        x_hat = output_activation(loss)(out.reconstruction)
    errors: Array = ((x_hat - torch.from_numpy(x)) ** 2).mean(dim=1).numpy()
    return errors


def train(model_cfg: ModelConfig, cfg: TrainingConfig, train_set: Array, validation: Array | None) -> Autoencoder:
    seed_everything(cfg.seed)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    train_model(model, train_set, validation, model_cfg=model_cfg, cfg=cfg, progress=False)
    return model


SMALL = {"hidden_units": (64, 32), "latent_dim": 4}
CASES: dict[str, tuple[ModelConfig, TrainingConfig]] = {
    "dense": (ModelConfig(**SMALL), fast_training()),
    "conv1d": (ModelConfig(kind="conv1d", conv_channels=(16, 16), kernel_size=5, latent_dim=4), fast_training()),
    "lstm": (ModelConfig(kind="lstm", lstm_hidden_size=32, latent_dim=4), fast_training(epochs=15, learning_rate=1e-2)),
    "vae": (ModelConfig(kind="vae", vae_beta=0.1, **SMALL), fast_training()),
    "dense-sparse-l1": (ModelConfig(sparsity="l1", sparsity_weight=1e-2, **SMALL), fast_training()),
    "dense-sparse-kl": (ModelConfig(sparsity="kl", sparsity_weight=1e-2, **SMALL), fast_training()),
    "dense-denoising-gaussian": (ModelConfig(**SMALL), fast_training(denoising="gaussian", noise_level=0.2)),
    "dense-denoising-masking": (ModelConfig(**SMALL), fast_training(denoising="masking", noise_level=0.2)),
}


@pytest.mark.parametrize("case", CASES)
def test_every_kind_learns_normal_windows_and_scores_injected_anomalies_higher(
    case: str, data: dict[str, Array]
) -> None:
    model_cfg, cfg = CASES[case]
    model = train(model_cfg, cfg, data["train"], data["validation"])
    normal, anomalous = per_vector_mse(model, data["normal"]), per_vector_mse(model, data["anomalous"])
    for fault, name in enumerate(["spike", "flat line", "noise"]):
        assert anomalous[fault::3].mean() > 3 * normal.mean(), name
    assert np.mean(anomalous > np.quantile(normal, 0.95)) > 0.9


def test_bce_loss_on_unit_scaled_data_scores_injected_anomalies_higher(data: dict[str, Array]) -> None:
    def to_unit(x: Array) -> Array:
        scaled: Array = np.clip((x + 1.5) / 3.0, 0.0, 1.0).astype(np.float32)
        return scaled

    model_cfg, cfg = ModelConfig(**SMALL), fast_training(loss="bce")
    model = train(model_cfg, cfg, to_unit(data["train"]), to_unit(data["validation"]))
    normal = per_vector_mse(model, to_unit(data["normal"]), loss="bce")
    anomalous = per_vector_mse(model, to_unit(data["anomalous"]), loss="bce")
    assert anomalous.mean() > 2 * normal.mean()


def test_bce_loss_rejects_training_data_outside_unit_range(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    with pytest.raises(DataError, match="bce"):
        train_model(model, data["train"], None, model_cfg=model_cfg, cfg=fast_training(loss="bce"), progress=False)


def test_training_with_the_same_seed_gives_identical_weights(data: dict[str, Array]) -> None:
    # A VAE with Gaussian denoising draws from both the global RNG and the loop's generator.
    model_cfg, cfg = ModelConfig(kind="vae", **SMALL), fast_training(epochs=3, denoising="gaussian", seed=7)
    first = train(model_cfg, cfg, data["train"], data["validation"]).state_dict()
    second = train(model_cfg, cfg, data["train"], data["validation"]).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_training_with_another_seed_gives_different_weights(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    first = train(model_cfg, fast_training(epochs=2, seed=1), data["train"], None).state_dict()
    second = train(model_cfg, fast_training(epochs=2, seed=2), data["train"], None).state_dict()
    assert not all(torch.equal(first[k], second[k]) for k in first)


def test_early_stopping_stops_on_a_plateau_and_restores_the_best_weights(data: dict[str, Array]) -> None:
    # A learning rate this small cannot move float32 weights, and without BatchNorm nothing else changes: a plateau.
    model_cfg = ModelConfig(batch_norm=False, **SMALL)
    cfg = fast_training(epochs=50, learning_rate=1e-12, early_stopping_patience=3)
    seed_everything(0)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    result = train_model(model, data["train"], data["validation"], model_cfg=model_cfg, cfg=cfg, progress=False)
    assert result.stopped_early
    assert result.epochs_run == 4 < cfg.epochs
    assert result.best_epoch == 1
    assert evaluate_loss(model, data["validation"], model_cfg=model_cfg, cfg=cfg) == pytest.approx(
        result.best_val_loss, rel=1e-6
    )


def test_min_steps_keeps_a_small_training_going_past_early_stopping(data: dict[str, Array]) -> None:
    # 64 vectors in batches of 32 are two steps an epoch: with min_steps = 40 the plateau that stops the training
    # above after 4 epochs may stop it only from epoch 20 on, and 1 epoch allowed is raised to 20.
    model_cfg = ModelConfig(batch_norm=False, **SMALL)
    cfg = fast_training(epochs=1, learning_rate=1e-12, early_stopping_patience=3, min_steps=40)
    seed_everything(0)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    result = train_model(model, data["train"][:64], data["validation"], model_cfg=model_cfg, cfg=cfg, progress=False)
    assert result.epochs_run == 20
    assert result.stopped_early


def test_min_steps_does_not_lengthen_a_training_that_takes_enough_steps_anyway(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(batch_norm=False, **SMALL)
    cfg = fast_training(epochs=50, learning_rate=1e-12, early_stopping_patience=3, min_steps=24)
    seed_everything(0)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    result = train_model(model, data["train"], data["validation"], model_cfg=model_cfg, cfg=cfg, progress=False)
    assert result.epochs_run == 4  # 12 steps an epoch: min_steps is passed in the second epoch


def test_the_best_epochs_weights_are_restored_after_the_loss_gets_worse(data: dict[str, Array]) -> None:
    # Validating on noise while learning sinusoids with a high learning rate: the validation loss wanders.
    model_cfg, cfg = ModelConfig(**SMALL), fast_training(epochs=12, learning_rate=3e-2)
    noise = np.random.default_rng(3).standard_normal(data["validation"].shape).astype(np.float32)
    seed_everything(0)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    result = train_model(model, data["train"], noise, model_cfg=model_cfg, cfg=cfg, progress=False)
    assert result.best_epoch < result.epochs_run  # so restoring actually changes the weights
    assert result.best_val_loss == min(result.val_loss)
    assert result.val_loss[result.best_epoch - 1] == result.best_val_loss
    restored = evaluate_loss(model, noise, model_cfg=model_cfg, cfg=cfg)
    assert restored == pytest.approx(result.best_val_loss, rel=1e-5)


def test_without_validation_the_training_loss_is_monitored(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    seed_everything(0)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    empty = np.zeros((0, STEPS * CHANNELS), dtype=np.float32)
    result = train_model(model, data["train"], empty, model_cfg=model_cfg, cfg=fast_training(epochs=5), progress=False)
    assert result.val_loss == []
    assert result.best_val_loss == min(result.train_loss)
    assert result.epochs_run == 5
    assert not result.stopped_early


def test_training_reports_each_epoch_and_leaves_the_model_in_eval_mode_on_cpu(
    data: dict[str, Array], caplog: pytest.LogCaptureFixture
) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    seen: list[tuple[int, float, float | None]] = []
    with caplog.at_level(logging.INFO, logger="ae_monitor.model.training"):
        result = train_model(
            model,
            data["train"],
            data["validation"],
            model_cfg=model_cfg,
            cfg=fast_training(epochs=3),
            progress=False,
            on_epoch=lambda *args: seen.append(args),
        )
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3]
    assert [loss for _, loss, _ in seen] == result.train_loss
    assert [val for _, _, val in seen] == result.val_loss
    assert len([r for r in caplog.records if "epoch" in r.getMessage()]) == 3
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert result.seconds > 0


def test_progress_bar_goes_to_stderr_when_asked(data: dict[str, Array], capsys: pytest.CaptureFixture[str]) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    train_model(
        model, data["train"], data["validation"], model_cfg=model_cfg, cfg=fast_training(epochs=2), progress=True
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "val_loss" in captured.err
    assert "2/2" in captured.err


def test_training_data_of_the_wrong_width_is_rejected(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    with pytest.raises(DataError, match="shape"):
        train_model(model, data["train"][:, :-1], None, model_cfg=model_cfg, cfg=fast_training(), progress=False)


def test_training_data_with_nan_is_rejected(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    bad = data["train"].copy()
    bad[3, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        train_model(model, bad, None, model_cfg=model_cfg, cfg=fast_training(), progress=False)


def test_a_final_batch_of_one_vector_does_not_break_batch_norm(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    result = train_model(model, data["train"][:33], None, model_cfg=model_cfg, cfg=fast_training(epochs=2))
    assert result.epochs_run == 2


def test_cuda_requested_without_cuda_raises_config_error_naming_training_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"training\.device") as info:
        resolve_device(TrainingConfig(device="cuda"))
    assert info.value.key == "training.device"


def test_auto_device_falls_back_to_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(TrainingConfig(device="auto")) == torch.device("cpu")
    assert resolve_device(TrainingConfig()) == torch.device("cpu")


def test_gaussian_corruption_adds_noise_of_the_configured_scale() -> None:
    x = torch.zeros(200, 100)
    noisy = corrupt(x, TrainingConfig(denoising="gaussian", noise_level=0.5), torch.Generator().manual_seed(0))
    assert noisy.std().item() == pytest.approx(0.5, rel=0.05)


def test_masking_corruption_zeroes_the_configured_fraction() -> None:
    x = torch.ones(200, 100)
    masked = corrupt(x, TrainingConfig(denoising="masking", noise_level=0.3), torch.Generator().manual_seed(0))
    assert (masked == 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert set(masked.flatten().tolist()) == {0.0, 1.0}


def test_no_corruption_returns_the_input_unchanged() -> None:
    x = torch.randn(4, 10)
    assert corrupt(x, TrainingConfig(), torch.Generator()) is x


def test_training_loss_compares_with_the_clean_input() -> None:
    # An identity "autoencoder" reconstructs its corrupted input, so its loss is exactly the corruption's MSE.
    class Identity(Autoencoder):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def decode(self, code: torch.Tensor) -> torch.Tensor:
            return code

    x = torch.zeros(100, 50)
    cfg = TrainingConfig(denoising="gaussian", noise_level=0.5)
    loss = training_loss(Identity((5, 10)), x, ModelConfig(), cfg, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.25, rel=0.05)


def test_bce_loss_is_bce_of_the_sigmoid_of_the_raw_output() -> None:
    x_hat, x = torch.randn(6, 7), torch.rand(6, 7)
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(x_hat), x)
    assert reconstruction_loss(x_hat, x, "bce").item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(output_activation("mse")(x_hat), x_hat)


def test_an_unknown_loss_has_no_output_activation() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        output_activation("BCE")  # type: ignore[arg-type]


def test_sparsity_penalties_are_zero_when_off_and_grow_with_activity() -> None:
    quiet, busy = torch.full((16, 8), -3.0), torch.full((16, 8), 3.0)
    assert sparsity_penalty(busy, ModelConfig()).item() == 0.0
    l1 = ModelConfig(sparsity="l1", sparsity_weight=0.5)
    assert sparsity_penalty(busy, l1).item() == pytest.approx(1.5)
    kl = ModelConfig(sparsity="kl", sparsity_target=0.05)
    assert sparsity_penalty(quiet, kl).item() < sparsity_penalty(busy, kl).item()
    at_target = torch.full((16, 8), float(torch.logit(torch.tensor(0.05))))
    assert sparsity_penalty(at_target, kl).item() == pytest.approx(0.0, abs=1e-6)


def test_masking_more_than_everything_is_a_config_error(data: dict[str, Array]) -> None:
    model_cfg = ModelConfig(**SMALL)
    model = build_model(model_cfg, (STEPS, CHANNELS))
    cfg = fast_training(denoising="masking", noise_level=1.5)
    with pytest.raises(ConfigError, match=r"training\.noise_level"):
        train_model(model, data["train"], None, model_cfg=model_cfg, cfg=cfg, progress=False)
