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
