"""Op tests run per (device, backend) pair: a test that takes the ``backend`` fixture runs once
for every pair its module lists in ``BACKENDS = {"cpu": [...], "cuda": [...]}`` (a test marked
``@pytest.mark.backends("torch", "cpp")`` only on those backends).

The fixture forces the backend (``PATRONUS_BACKEND``) and, for CUDA pairs, makes CUDA the default
device, so tensors created without ``device=`` land on it. CUDA pairs carry the ``cuda`` mark:
skipped without a GPU, run by ``make gpu-check``. On CPU, ``triton`` runs the Triton kernels under
the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU). On CUDA, Triton tests
launch one fixed configuration (the autotuner's first) instead of autotuning every new shape,
which benchmarks each configuration and would take most of a short GPU loan; every configuration
is checked by its own test, and tests marked ``autotune`` keep the autotuner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from patronus import _backend


@dataclass(frozen=True)
class Backend:
    device: str
    name: str


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    wanted = set(marker.args) if marker else None
    params = [
        pytest.param(
            Backend(device, name),
            id=f"{device}-{name}",
            marks=[pytest.mark.cuda] if device == "cuda" else [],
        )
        for device, names in metafunc.module.BACKENDS.items()
        for name in names
        if wanted is None or name in wanted
    ]
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    chosen: Backend = request.param
    if chosen.name == "cpp" and _backend.load_extension()[0] is None:
        pytest.skip("patronus._C is not built (PATRONUS_BUILD_EXT=0)")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if chosen.name == "triton" and chosen.device == "cpu" and not interpreted:
        pytest.fail("without a GPU the Triton tests need TRITON_INTERPRET=1 (tests/conftest)")
    monkeypatch.setenv("PATRONUS_BACKEND", chosen.name)
    if chosen.device == "cuda":
        torch.set_default_device("cuda")
        request.addfinalizer(lambda: torch.set_default_device(None))
        if chosen.name == "triton" and request.node.get_closest_marker("autotune") is None:
            _launch_one_configuration(request)
    return chosen


def _launch_one_configuration(request: pytest.FixtureRequest) -> None:
    from patronus.kernels import prototype_distance as kernels

    forced = kernels.forced_config(kernels._FORWARD_CONFIGS[0])
    forced.__enter__()
    request.addfinalizer(lambda: forced.__exit__(None, None, None))
