"""Stage 4 (model): a bundle's scoring computation as an ONNX graph, and running it with ONNX Runtime.

`scoring_graph` (torch needed) wraps a network in the exact computation `scoring.Scorer` does per batch: the
reconstruction through the loss's output activation, squared errors, each vector's mean (plus the KL term when a
VAE is scored by its ELBO) and each feature group's sum; `export_graph` traces it to ONNX bytes and refuses a graph
whose scores differ from torch's. `OnnxNetwork` runs those bytes with onnxruntime and numpy only, so a daemon
scoring with `scoring.backend = "onnx"` never imports torch. The bundle stores the graph as `model.onnx`
(model/bundle.py: `export_onnx`), hashed in the manifest like its other files.

The graph has one input and four outputs, all float32 with the batch as their first axis::

    vectors (N, D) -> errors (N,), group_errors (N, G), code (N, latent), reconstruction (N, D)
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ae_monitor.errors import BundleError

if TYPE_CHECKING:
    import torch

    from ae_monitor.config import ModelConfig
    from ae_monitor.model.networks import Autoencoder
    from ae_monitor.model.training import LossKind

ONNX_FILE = "model.onnx"
# Opset 17 is what onnxruntime 1.16+ runs (the oldest release the `onnx` extra allows) and has every operator the
# networks use (Gemm, Conv, ConvTranspose, LSTM, BatchNormalization folded into them in eval mode).
OPSET = 17
INPUT = "vectors"
OUTPUTS = ("errors", "group_errors", "code", "reconstruction")
# The exported graph must give torch's scores to this relative tolerance (float32 kernels order sums differently:
# measured differences are about 1e-7 relative).
EXPORT_RTOL = 1e-4

F32 = npt.NDArray[np.float32]


def scoring_graph(
    model: Autoencoder, model_config: ModelConfig, *, vector_shape: tuple[int, int], loss: LossKind
) -> torch.nn.Module:
    """`model` wrapped in the per-batch computation of `scoring.Scorer`, as one module to export."""
    from torch import nn

    from ae_monitor.model.training import output_activation

    elbo = model_config.kind == "vae" and model_config.vae_score == "elbo"
    beta, activation = model_config.vae_beta, output_activation(loss)

    class ScoringGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.network(x)
            reconstruction = activation(out.reconstruction)
            squared = (reconstruction - x).square()
            errors = squared.mean(dim=1)
            if elbo and out.mu is not None and out.logvar is not None:
                kl = -0.5 * (1 + out.logvar - out.mu.square() - out.logvar.exp()).sum(dim=1)
                errors = errors + beta * kl / x.shape[1]
            return errors, squared.reshape(-1, *vector_shape).sum(dim=1), out.code, reconstruction

    return ScoringGraph().eval()


def export_graph(graph: torch.nn.Module, *, input_dim: int) -> bytes:
    """The ONNX bytes of `graph` (a `scoring_graph`), with a dynamic batch axis, checked against torch."""
    import torch

    example = torch.zeros(2, input_dim)
    axes = {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(), warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) needs only the `onnx` package, where the dynamo exporter also
            # needs onnxscript; torch announces its retirement, noted in docs/footprint.md.
            warnings.simplefilter("ignore", DeprecationWarning)
            # The tracer warns where a network branches on a shape (Conv1d's crop to T): those are the time and
            # group axes, fixed per bundle; only the batch axis varies, and the check below runs another batch size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]  # public, not re-exported
            # The LSTM's zero initial states are sized from the input's batch (aten::size) in the graph: it runs
            # at any batch size, which the same check confirms.
            warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
            target = Path(tmp) / ONNX_FILE
            torch.onnx.export(graph, (example,), target, input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)  # fmt: skip
            data = target.read_bytes()
    except ImportError as exc:
        raise BundleError(f"exporting needs the `onnx` extra (pip install 'ae-monitor[onnx]'): {exc}",
                          field=ONNX_FILE) from exc  # fmt: skip
    _check_against_torch(graph, OnnxNetwork.from_bytes(data, where=ONNX_FILE), input_dim)
    return data


def _check_against_torch(graph: torch.nn.Module, network: OnnxNetwork, input_dim: int) -> None:
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, input_dim)).astype(np.float32)
    with torch.inference_mode():
        expected = [t.numpy() for t in graph(torch.from_numpy(x))]
    for name, want, got in zip(OUTPUTS, expected, network.run(x), strict=True):
        scale = max(float(np.abs(want).max()), 1e-12)
        diff = float(np.abs(want - got).max())
        if diff > EXPORT_RTOL * scale:
            raise BundleError(f"the exported graph's {name} differ from torch's by {diff:.3g} (scale {scale:.3g}); "
                              "this network does not export faithfully, keep scoring.backend = 'torch'",
                              field=ONNX_FILE)  # fmt: skip


class OnnxNetwork:
    """An exported scoring graph in an onnxruntime session: `run` (N, D) -> errors, group errors, codes, rebuilds.

    Single-threaded by default like the torch backend (`scoring.torch_threads`): serve scales with processes."""

    def __init__(self, session: Any) -> None:
        self._session = session

    @classmethod
    def load(cls, path: Path, *, threads: int = 1) -> OnnxNetwork:
        """The graph at `path`; a missing or unreadable file, or one that is not such a graph, is a BundleError."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror}; run `ae-monitor export --onnx {path.parent}`",
                              field=ONNX_FILE) from exc  # fmt: skip
        return cls.from_bytes(data, where=str(path), threads=threads)

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str, threads: int = 1) -> OnnxNetwork:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BundleError("scoring.backend 'onnx' needs onnxruntime: pip install 'ae-monitor[onnx]'",
                              field=ONNX_FILE) from exc  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # Idle workers spinning between micro-batches would take CPU from the Kafka client on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: onnxruntime writes to stderr itself
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (pybind) error types for malformed models
            raise BundleError(f"{where} is not a usable ONNX model: {exc}", field=ONNX_FILE) from exc
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != ([INPUT], list(OUTPUTS)):
            raise BundleError(f"{where} has inputs/outputs {names}, not the scoring graph's "
                              f"{([INPUT], list(OUTPUTS))}; export it again", field=ONNX_FILE)  # fmt: skip
        return cls(session)

    def run(self, vectors: npt.NDArray[np.float32]) -> tuple[F32, F32, F32, F32]:
        """errors (N,), group errors (N, G), codes (N, latent) and reconstructions (N, D) of `vectors` (N, D)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        errors, groups, code, reconstruction = self._session.run(None, {INPUT: x})
        return errors, groups, code, reconstruction

    def score(self, vectors: npt.NDArray[np.float32]) -> tuple[F32, F32]:
        """errors (N,) and group errors (N, G) only."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        errors, groups = self._session.run(list(OUTPUTS[:2]), {INPUT: x})
        return errors, groups
