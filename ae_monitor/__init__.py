"""ae_monitor: streaming anomaly detection with autoencoders.

The data flow is the architecture: source -> window -> features -> model -> score -> threshold -> alert -> sink.

The Python API (docs/python-api.md) is this package's face:

    import ae_monitor
    detector = ae_monitor.train(normal, config={"features": {"kind": "sensor"}})
    scores = detector.score(recent)          # .score, .threshold, .anomalous, .contributions per window
    detector.save("bundles/pump")            # ae_monitor.load("bundles/pump") reads it back
    result = detector.stream(records)        # the streaming engine in-process: .windows, .alerts

`SensorRecord` and `AudioRecord` (what `stream` takes) and `Alert`, `WindowScore` (what it gives) are here too.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ae_monitor.api import Detector, Scores, StreamResult, load, train
    from ae_monitor.records import Alert, AudioRecord, SampleRows, SensorRecord, WindowScore

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AudioRecord",
    "Detector",
    "SampleRows",
    "Scores",
    "SensorRecord",
    "StreamResult",
    "WindowScore",
    "__version__",
    "load",
    "train",
]
_HOMES = {
    **dict.fromkeys(("Detector", "Scores", "StreamResult", "load", "train"), "ae_monitor.api"),
    **dict.fromkeys(("Alert", "AudioRecord", "SampleRows", "SensorRecord", "WindowScore"), "ae_monitor.records"),
}

# Libraries never configure logging; the CLI does.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    """The API on first use: `import ae_monitor` (and so every command's start) does not load torch."""
    if name not in _HOMES:
        raise AttributeError(f"module 'ae_monitor' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
