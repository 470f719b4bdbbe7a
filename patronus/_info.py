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


def kernel_summary(kernels: dict[str, list[str]], torch_cuda: str | None) -> str:
    """``{"cpu": [op, ...], "cuda": [...]}`` -> "cpu: a, b; cuda: none", saying why when torch is
    a CUDA build (``torch_cuda``) but no CUDA kernel was compiled (setup.py builds the CPU ones
    only when nvcc is of another CUDA version)."""
    text = "; ".join(f"{device}: {', '.join(names) or 'none'}" for device, names in kernels.items())
    if torch_cuda and not kernels.get("cuda"):
        text += (
            f" (torch is a CUDA {torch_cuda} build: the extension was built without nvcc of that "
            "CUDA version, so the CUDA ops run their PyTorch references)"
        )
    return text


def _extension_kernels() -> str:
    """The compiled kernels of the loaded extension, per device (see :func:`kernel_summary`)."""
    module, _ = _backend.load_extension()
    if module is None:
        return "none (the extension is not loaded)"
    kernels = {}
    for key in ("CPU", "CUDA"):
        registered = torch._C._dispatch_get_registrations_for_dispatch_key(key)
        kernels[key.lower()] = sorted(
            name.split("::")[1] for name in registered if name.startswith("patronus::")
        )
    return kernel_summary(kernels, torch.version.cuda)


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
