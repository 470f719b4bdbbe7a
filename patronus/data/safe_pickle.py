"""Unpickling that executes no arbitrary code: only an allow-list of globals may be loaded."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable

PLAIN_GLOBALS = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("builtins", "range"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }
)
NUMPY_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: frozenset[tuple[str, str]], **kwargs) -> None:
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only plain data may be unpickled here"
            )
        return super().find_class(module, name)


def safe_load(data: bytes, allowed: Iterable[tuple[str, str]] = PLAIN_GLOBALS, **kwargs):
    """Unpickle ``data`` allowing only the ``allowed`` (module, name) globals."""
    return _RestrictedUnpickler(io.BytesIO(data), frozenset(allowed), **kwargs).load()
