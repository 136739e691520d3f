"""ae_monitor: streaming anomaly detection with autoencoders.

The data flow is the architecture: source -> window -> features -> model -> score -> threshold -> alert -> sink.
"""

import logging

__version__ = "0.1.0"

# Libraries never configure logging; the CLI does.
logging.getLogger(__name__).addHandler(logging.NullHandler())
