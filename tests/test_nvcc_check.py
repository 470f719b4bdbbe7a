"""The CUDA sources compile with nvcc on any machine (no GPU, no CUDA build of torch needed)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


@needs_nvcc
def test_torch_free_kernel_header_compiles(tmp_path):
    command = [NVCC, "-c", "-std=c++17", "-arch=sm_90", str(ROOT / "csrc/tests/nvcc_check.cu"),
               "-o", str(tmp_path / "check.o")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@needs_nvcc
@pytest.mark.slow
def test_cuda_launcher_compiles_against_torch_headers(tmp_path):
    """The ATen launcher too, with this torch's headers; a CPU build of torch lacks one generated
    CUDA header (c10/cuda/impl/cuda_cmake_macros.h), which the test supplies."""
    include = Path(torch.utils.cmake_prefix_path).parents[1] / "include"
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    command = [
        NVCC, "-c", "-std=c++17", "-arch=sm_90", "--expt-relaxed-constexpr",
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
        f"-I{tmp_path / 'stub'}", f"-I{include}", f"-I{include / 'torch/csrc/api/include'}",
        str(ROOT / "csrc/scheduler_step/cuda.cu"), "-o", str(tmp_path / "launcher.o"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
