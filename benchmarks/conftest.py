"""Benchmark fixtures: the device under test and the facts every result is saved with."""

from __future__ import annotations

import platform

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pytest_benchmark_update_machine_info(config, machine_info):
    import patronus

    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["device"] = device_name(
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    machine_info["patronus_info"] = patronus.info()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory (MB) that ``fn()`` adds over what was allocated before it.

    CUDA: the caching allocator's peak. CPU: the peak resident set size (VmHWM after resetting it
    through /proc/self/clear_refs), which large tensors reach and leave through mmap.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_mb("VmRSS")
    fn()
    return _status_mb("VmHWM") - before
