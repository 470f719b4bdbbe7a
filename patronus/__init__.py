"""patronus: fast, interpretable prototype-based diffusion models.

Importing patronus never initialises CUDA and works without Triton or the compiled extension.
"""

from patronus._info import info
from patronus.models import Patronus, PatronusConfig

__version__ = "0.1.0"

__all__ = ["Patronus", "PatronusConfig", "__version__", "info"]
