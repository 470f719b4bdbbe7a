"""Benchmark fixtures: the device under test and the facts every result is saved with."""

from __future__ import annotations

import ctypes
import os
import platform

import pytest
import torch

# compile in this process: a pool of inductor compile workers would compete with the timed runs
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

M_MMAP_THRESHOLD = -3
try:
    LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    LIBC = None


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    plural = "s" if threads > 1 else ""
    return f"{platform.processor() or platform.machine()} CPU, {threads} thread{plural}"


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
    machine_info["threads"] = torch.get_num_threads()
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
    if LIBC is None:
        return float("nan")
    # while measuring, glibc maps every block of 64 kB or more and unmaps it when freed, so the
    # resident set follows the live tensors instead of the allocator's cache; afterwards a large
    # threshold lets timed runs reuse memory as usual
    LIBC.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_mb("VmRSS")
    try:
        fn()
        return _status_mb("VmHWM") - before
    finally:
        LIBC.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)


def activation_mb(forward, inputs: tuple[torch.Tensor, ...]) -> float:
    """Memory (MB) autograd keeps for the backward of ``forward(*inputs)``, inputs excluded:
    the unique storages of the tensors saved by the forward."""
    input_storages = {t.untyped_storage().data_ptr() for t in inputs}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in input_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(*inputs)
    return sum(saved.values()) / 2**20
