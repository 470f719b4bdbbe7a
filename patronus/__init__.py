"""patronus: fast, interpretable prototype-based diffusion models.

Importing patronus never initialises CUDA and works without Triton or the compiled extension.
"""

from typing import TYPE_CHECKING, Any

from patronus._info import info
from patronus._version import __version__
from patronus.models import Patronus, PatronusConfig

if TYPE_CHECKING:  # type checkers see the lazily imported functions' signatures
    from patronus.checkpoint import load_model, save_model
    from patronus.reference_checkpoint import load_reference_checkpoint

# checkpoint I/O needs safetensors: imported on first use, so the model and the ops need only torch
_LAZY = {
    "load_model": "patronus.checkpoint",
    "save_model": "patronus.checkpoint",
    "load_reference_checkpoint": "patronus.reference_checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'patronus' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Lists the lazily imported names too (tab completion, ``dir(patronus)``)."""
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Patronus",
    "PatronusConfig",
    "__version__",
    "info",
    "load_model",
    "load_reference_checkpoint",
    "save_model",
]
