"""patronus: fast, interpretable prototype-based diffusion models.

Importing patronus never initialises CUDA and works without Triton or the compiled extension.
"""

from patronus._info import info
from patronus.checkpoint import load_model, save_model
from patronus.models import Patronus, PatronusConfig
from patronus.reference_checkpoint import load_reference_checkpoint

__version__ = "0.1.0"

__all__ = [
    "Patronus",
    "PatronusConfig",
    "__version__",
    "info",
    "load_model",
    "load_reference_checkpoint",
    "save_model",
]
