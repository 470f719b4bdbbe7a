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
