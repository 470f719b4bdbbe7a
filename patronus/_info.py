"""``patronus.info()``: versions, devices and the backend serving each op, with reasons."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from patronus import _backend
from patronus._version import __version__


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def _extension_threads() -> str:
    """How many threads the extension's parallel loops run on (torch's count, when built with
    the OpenMP flags torch uses)."""
    module, _ = _backend.load_extension()
    if module is None:
        return "not built"
    work = 4 * torch.get_num_threads()
    return str(torch.ops.patronus.parallel_threads_seen(work))


def _extension_kernels() -> str:
    """The compiled kernels of the extension, per device (a CUDA build of torch gets CPU kernels
    only when the extension was built with an nvcc of another CUDA version: setup.py)."""
    module, _ = _backend.load_extension()
    if module is None:
        return "none (the extension is not loaded)"
    parts, has_cuda = [], False
    for key in ("CPU", "CUDA"):
        registered = torch._C._dispatch_get_registrations_for_dispatch_key(key)
        names = sorted(name.split("::")[1] for name in registered if name.startswith("patronus::"))
        has_cuda |= key == "CUDA" and bool(names)
        parts.append(f"{key.lower()}: {', '.join(names) or 'none'}")
    text = "; ".join(parts)
    if torch.version.cuda and not has_cuda:
        text += (
            f" (torch is a CUDA {torch.version.cuda} build: the extension was built without nvcc "
            "of that CUDA version, so the CUDA ops run their PyTorch references)"
        )
    return text


def info() -> str:
    """A report of versions, devices, the extension and Triton, and the backend of each op."""
    from patronus.ops import backend_choices

    _, extension = _backend.load_extension()
    lines = [
        f"patronus {__version__}",
        f"python {platform.python_version()} on {platform.platform()}",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"numpy {_version('numpy')}, safetensors {_version('safetensors')}",
        f"triton: {_backend.triton_status() or _version('triton')}",
        f"extension patronus._C: {extension}",
        f"extension kernels: {_extension_kernels()}",
        f"CPU threads: torch {torch.get_num_threads()}, extension {_extension_threads()}",
        f"{_backend.ENV_VAR}={_backend.requested_backend()}",
    ]
    for device in _devices():
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        lines.append(f"device {device.type}: {name or 'cpu'}")
        try:
            for op, choice in backend_choices(device).items():
                lines.append(f"  {op:<24} {choice.name:<7} ({choice.reason})")
        except _backend.BackendUnavailableError as error:
            lines.append(f"  {error}")
    return "\n".join(lines)
