"""Unpickling that executes no arbitrary code and builds nothing unbounded.

A pickle may name only allow-listed globals, and each is replaced by a constructor that checks
its arguments and builds plain data: containers only from what the pickle itself spelled out
(their size is bounded by the pickle's), numbers and strings, ``torch.device`` as its string. The
input size is capped, and every failure (bad opcode, wrong argument, truncation, recursion) is an
``UnpicklingError`` naming what went wrong.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

MAX_BYTES = 1 << 20  # a config pickle is a few KB
_SEQUENCES = (list, tuple)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise pickle.UnpicklingError(f"refusing to build {what}")


def _set(items=()) -> set:
    _expect(isinstance(items, _SEQUENCES), "a set from anything but a list or tuple")
    return set(items)


def _frozenset(items=()) -> frozenset:
    _expect(isinstance(items, _SEQUENCES), "a frozenset from anything but a list or tuple")
    return frozenset(items)


def _ordered_dict(items=()) -> OrderedDict:
    _expect(isinstance(items, _SEQUENCES), "an OrderedDict from anything but a list of pairs")
    return OrderedDict(items)


def _complex(real=0.0, imag=0.0) -> complex:
    numbers = (int, float)
    _expect(isinstance(real, numbers) and isinstance(imag, numbers), "a complex from non-numbers")
    return complex(real, imag)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    # how protocol-2 pickles written by Python 3 store bytes: _codecs.encode(str, "latin1")
    _expect(isinstance(text, str) and encoding in ("latin1", "latin-1"), "bytes this way")
    return text.encode("latin1")


def _device(kind: str, index: int | None = None) -> str:
    """``torch.device`` (the original's config records ``DEVICE``) -> its string, e.g. 'cuda:0'."""
    _expect(isinstance(kind, str) and len(kind) < 64, "a device from a non-string")
    _expect(index is None or type(index) is int, "a device with a non-integer index")
    return kind if index is None else f"{kind}:{index}"


PLAIN_GLOBALS: Mapping[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("builtins", "complex"): _complex,
    ("collections", "OrderedDict"): _ordered_dict,
    ("_codecs", "encode"): _encode,
    ("torch", "device"): _device,
}


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x (before 1.26 it has no numpy._core)
        multiarray = importlib.import_module("numpy.core.multiarray")
    _reconstruct = multiarray._reconstruct

    ndarray = object()  # stands for numpy.ndarray, which must not be callable from the pickle

    def _array(cls, shape, dtype_code):
        # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") + __setstate__ (which checks
        # that the data fits the shape); another initial shape would allocate at will
        _expect(cls is ndarray and tuple(shape) == (0,), "an array this way")
        return _reconstruct(np.ndarray, shape, dtype_code)

    def _dtype(code, align=False, copy=False):
        # Python 2 pickles (CIFAR-10's) spell the code as bytes under encoding="bytes"
        if isinstance(code, bytes):
            code = code.decode("ascii", "replace")
        _expect(isinstance(code, str) and len(code) < 16, "a dtype from a non-string")
        return np.dtype(code, bool(align), bool(copy))

    def _scalar(dtype, data=None):
        _expect(isinstance(dtype, np.dtype) and isinstance(data, bytes), "a scalar this way")
        _expect(len(data) == dtype.itemsize, "a scalar whose bytes do not fit its dtype")
        return np.frombuffer(data, dtype)[0]

    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = _array
        table[(module, "scalar")] = _scalar
    table[("numpy", "dtype")] = _dtype
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: Mapping[tuple[str, str], Callable[..., Any]], **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only plain data may be unpickled here"
            ) from None


def safe_load(
    data: bytes,
    allowed: Mapping[tuple[str, str], Callable[..., Any]] = PLAIN_GLOBALS,
    max_bytes: int = MAX_BYTES,
    **kwargs: Any,
) -> Any:
    """Unpickle ``data`` (at most ``max_bytes``), calling only the ``allowed`` constructors.

    Raises ``pickle.UnpicklingError`` for anything else, whatever the underlying failure.
    """
    if len(data) > max_bytes:
        raise pickle.UnpicklingError(f"{len(data)} bytes is more than the {max_bytes} allowed")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), allowed, **kwargs).load()
    except pickle.UnpicklingError:
        raise
    except Exception as error:  # a malformed pickle raises almost any type
        message = f"malformed pickle ({type(error).__name__}: {error})"
        raise pickle.UnpicklingError(message) from error


def numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The plain constructors plus numpy arrays, dtypes and scalars (CIFAR-10's batches)."""
    return {**PLAIN_GLOBALS, **_numpy_globals()}
