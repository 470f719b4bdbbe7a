"""Which backend serves each op, and why.

Backends are ``triton`` (fused GPU kernels), ``cpp`` (the compiled ``patronus._C`` extension) and
``torch`` (pure PyTorch, always available; it is also the test oracle). ``PATRONUS_BACKEND``
(``auto`` | ``triton`` | ``cpp`` | ``torch``) forces one for every op that has it (ops without it
keep their automatic choice, so a whole model runs); a forced backend that an op has but cannot
use here (no GPU, Triton missing, extension not built) raises :class:`BackendUnavailableError`
naming the reason.

Nothing here initialises CUDA: availability checks look at the tensor's device and at what is
importable, never at ``torch.cuda``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType

import torch

from patronus.errors import PatronusError

BACKENDS = ("triton", "cpp", "torch")
ENV_VAR = "PATRONUS_BACKEND"
INTERPRET_VAR = "TRITON_INTERPRET"  # Triton's interpreter (read by the Triton probes)

# A probe returns None when the backend can serve the device, otherwise the reason it cannot.
Probe = Callable[[torch.device], "str | None"]


class BackendUnavailableError(PatronusError, RuntimeError):
    """A backend forced with ``PATRONUS_BACKEND`` cannot serve the requested call."""


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise BackendUnavailableError(
            f"{ENV_VAR}={value!r} is not a backend; use one of auto, {', '.join(BACKENDS)}"
        )
    return value


@cache
def load_extension() -> tuple[ModuleType | None, str]:
    """Import ``patronus._C`` once; returns (module or None, status sentence)."""
    if os.environ.get("PATRONUS_BUILD_EXT", "1") == "0":
        return None, "disabled by PATRONUS_BUILD_EXT=0"
    try:
        module = importlib.import_module("patronus._C")
    except ImportError as error:
        return None, (f"not built ({error}); build it with `pip install --no-build-isolation -e .`")
    return module, f"loaded from {module.__file__}"


@cache
def triton_status() -> str | None:
    """None when Triton is importable, otherwise why not (without importing it)."""
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError) as error:
        return f"Triton cannot be found ({error})"
    return None if found else "Triton is not installed"


def select(op: str, device: torch.device, probes: Mapping[str, Probe]) -> BackendChoice:
    """Pick the backend for ``op`` on ``device``.

    ``probes`` maps backend names, in order of preference, to availability probes. ``torch``
    must always be among them and always available.
    """
    requested = requested_backend()
    if requested != "auto" and requested in probes:
        reason = probes[requested](device)
        if reason is not None:
            raise BackendUnavailableError(
                f"{ENV_VAR}={requested}: cannot run {op!r} on {device.type}: {reason}"
            )
        return BackendChoice(requested, f"forced by {ENV_VAR}")
    refusals = [f"{requested}: not implemented for this op"] if requested != "auto" else []
    for name, probe in probes.items():
        reason = probe(device)
        if reason is None:
            why = "; ".join(refusals) or "preferred"
            return BackendChoice(name, why)
        refusals.append(f"{name}: {reason}")
    raise BackendUnavailableError(f"no backend can run {op!r} on {device.type}: {refusals}")


@dataclass(frozen=True)
class OpBackends:
    """One op's backends, in order of preference, each with its availability probe; ``torch``
    must be among them (always available).

    Choices are remembered per (device, ``PATRONUS_BACKEND``, ``TRITON_INTERPRET``): the op asks
    on every call (a few microseconds of host time each, next to kernels of a few microseconds on a
    GPU), so a probe may read only the device, those two variables and what stays fixed in a
    process (whether Triton is installed, the extension loaded)."""

    op: str
    probes: Mapping[str, Probe]
    _chosen: dict[tuple, BackendChoice] = field(default_factory=dict, compare=False, repr=False)

    def select(self, device: torch.device) -> BackendChoice:
        """The backend serving ``op`` on ``device`` now, with the reason."""
        key = (device.type, device.index, os.environ.get(ENV_VAR), os.environ.get(INTERPRET_VAR))
        choice = self._chosen.get(key)
        if choice is None:
            choice = self._chosen[key] = select(self.op, device, self.probes)
        return choice


def torch_probe(device: torch.device) -> str | None:
    return None


def cpp_probe(op: str) -> Probe:
    """Probe for a ``_C`` op: the extension must be built and have a kernel for the device."""

    def probe(device: torch.device) -> str | None:
        module, status = load_extension()
        if module is None:
            return f"extension {status}"
        qualified = f"patronus::{op}"
        dispatch_key = device.type.upper()
        try:
            has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(qualified, dispatch_key)
        except RuntimeError:
            return f"extension has no op {qualified}"
        if not has_kernel:
            return f"extension has no {device.type} kernel for {qualified}"
        return None

    return probe
