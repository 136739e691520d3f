"""Stage 3, features: samples of one stream in, fixed-size feature vectors out.

An extractor holds the configuration and any fitted statistics; `stream()` gives the per-stream incremental state.
Feeding a stream in chunks of any size and then flushing gives exactly the vectors of `transform` on the whole
signal. Each vector is flattened row-major from `vector_shape = (time_steps, groups)` and carries the range of stream
samples it covers (start inclusive, end exclusive, counted from the first sample pushed since the last flush).

    >>> from ae_monitor.config import FeaturesConfig
    >>> extractor = build_extractor(FeaturesConfig())
    >>> extractor.vector_shape, extractor.group_names[:2]
    ((5, 128), ('mel_000', 'mel_001'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from ae_monitor.config import FeaturesConfig
from ae_monitor.records import Vectors

if TYPE_CHECKING:
    from ae_monitor.features.logmel import LogMelExtractor
    from ae_monitor.features.sensor import SensorExtractor

__all__ = ["FeatureExtractor", "FeatureStream", "build_extractor", "concat_vectors"]


class FeatureStream(Protocol):
    """Incremental feature state of one stream; owned by whoever owns the stream. Never blocks."""

    def push(self, samples: npt.NDArray[Any]) -> Vectors:
        """Consume samples ((n,) mono audio or (n, channels)); return every vector that is now complete."""
        ...

    def flush(self) -> Vectors:
        """End of stream: return the vectors that need the end (audio end padding), then start afresh."""
        ...


class FeatureExtractor(Protocol):
    """Configuration plus fitted statistics; makes one `FeatureStream` per stream."""

    vector_shape: tuple[int, int]
    group_names: tuple[str, ...]
    sample_rate_hz: float

    def stream(self) -> FeatureStream: ...

    def transform(self, samples: npt.NDArray[Any]) -> Vectors:
        """All vectors of a whole signal: a fresh stream, one push, one flush."""
        ...

    def to_manifest(self) -> dict[str, Any]:
        """JSON-able configuration and fitted statistics, restored by `build_extractor(features, manifest)`."""
        ...


def build_extractor(features: FeaturesConfig, manifest: Mapping[str, Any] | None = None) -> FeatureExtractor:
    """The extractor `features.kind` names, with the fitted statistics of `manifest` (a `to_manifest()` result).

    Raises ValueError when the manifest belongs to another kind of extractor or its statistics are unusable.
    """
    if manifest is not None and manifest.get("kind") != features.kind:
        raise ValueError(f"the feature manifest is for {manifest.get('kind')!r} features, not {features.kind!r}")
    # Imported here so that sensor-only processes never import librosa.
    extractor: LogMelExtractor | SensorExtractor
    if features.kind == "logmel":
        from ae_monitor.features.logmel import LogMelExtractor

        extractor = LogMelExtractor.from_manifest(features.logmel, manifest)
    else:
        from ae_monitor.features.sensor import SensorExtractor

        extractor = SensorExtractor.from_manifest(features.sensor, manifest)
    return extractor


def concat_vectors(parts: Sequence[Vectors], dim: int) -> Vectors:
    """The vectors of `parts` one after the other (`dim` values each; used when every part is empty)."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return Vectors.empty(dim)
    if len(parts) == 1:
        return parts[0]
    return Vectors(
        np.concatenate([part.data for part in parts]),
        np.concatenate([part.first_sample for part in parts]),
        np.concatenate([part.end_sample for part in parts]),
    )
