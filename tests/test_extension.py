"""The compiled extension patronus._C: built here unless disabled, and optional at run time.

The ops it serves are tested per op in tests/ops/ (every backend and device)."""

import os
import subprocess
import sys

import pytest
import torch

import patronus
from patronus import _backend

BUILT = os.environ.get("PATRONUS_BUILD_EXT", "1") != "0"


def test_extension_is_built_unless_disabled():
    module, status = _backend.load_extension()
    if BUILT:
        assert module is not None, f"patronus._C should be built here: {status}"
    else:
        assert module is None and "PATRONUS_BUILD_EXT=0" in status


def test_without_extension_everything_runs_on_torch():
    """PATRONUS_BUILD_EXT=0 at run time: the package works and info() says why."""
    code = (
        "import torch, patronus\n"
        "from patronus.ops import q_sample, scheduler_step\n"
        "x = torch.randn(2, 3)\n"
        "q_sample(x, x, torch.ones(2), torch.zeros(2))\n"
        "scheduler_step(x, x, 5, 4, torch.linspace(0.99, 0.01, 10, dtype=torch.float64))\n"
        "print(patronus.info())\n"
    )
    env = {**os.environ, "PATRONUS_BUILD_EXT": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "disabled by PATRONUS_BUILD_EXT=0" in out.stdout
    assert "q_sample                 torch" in out.stdout
    assert "scheduler_step           torch" in out.stdout


def test_info_lists_the_compiled_kernels_per_device():
    if not BUILT:
        pytest.skip("the extension is disabled (PATRONUS_BUILD_EXT=0)")
    cpu_kernels = "prototype_min_distance_bwd, prototype_min_distance_fwd, q_sample_fwd"
    text = patronus.info()
    assert f"extension kernels: cpu: {cpu_kernels}, scheduler_step_fwd; cuda: " in text
    if torch.version.cuda is None:  # a CPU build of torch: no CUDA kernels, nothing to explain
        assert "; cuda: none\n" in text


def test_a_cuda_torch_without_cuda_kernels_is_explained():
    """A CUDA torch with an extension built without nvcc of its CUDA version (setup.py then
    builds the CPU kernels only) is told apart in info(), with or without a GPU."""
    from patronus._info import kernel_summary

    built = {"cpu": ["q_sample_fwd", "scheduler_step_fwd"], "cuda": ["scheduler_step_fwd"]}
    expected = "cpu: q_sample_fwd, scheduler_step_fwd; cuda: scheduler_step_fwd"
    assert kernel_summary(built, "13.0") == expected
    assert kernel_summary({**built, "cuda": []}, None).endswith("; cuda: none")
    assert kernel_summary({**built, "cuda": []}, "12.6").endswith(
        "; cuda: none (torch is a CUDA 12.6 build: the extension was built without nvcc of that "
        "CUDA version, so the CUDA ops run their PyTorch references)"
    )


def test_parallel_loops_use_the_threads_torch_is_set_to():
    """The extension is compiled with torch's OpenMP flags: its at::parallel_for runs on as many
    threads as torch.set_num_threads allows (without the flags it runs on one, whatever is set).
    In a subprocess, so that thread settings do not leak into other tests."""
    if not BUILT:
        pytest.skip("the extension is disabled (PATRONUS_BUILD_EXT=0)")
    code = (
        "import torch, patronus._C\n"
        "seen = []\n"
        "for threads in (1, 2):\n"
        "    torch.set_num_threads(threads)\n"
        "    seen.append(torch.ops.patronus.parallel_threads_seen(64))\n"
        "print(seen, torch.ops.patronus.parallel_threads_seen(1))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["[1,", "2]", "1"]
