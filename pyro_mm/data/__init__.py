"""What goes in: the multimodal data container, its checks, file formats, stores on
disk, statistics streamed over it, and the batches and loaders the model runs on.

The lowest layer above :mod:`pyro_mm.errors`; nothing here imports the model.
"""

from .batch import TensorBatch
from .checks import MISSING_LABEL
from .container import MultimodalData

__all__ = ["MISSING_LABEL", "MultimodalData", "TensorBatch"]
