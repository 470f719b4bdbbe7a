"""CMakeLists.txt builds the ops against libtorch and its C++ tests pass under ctest."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest(tmp_path):
    torch_dir = Path(torch.utils.cmake_prefix_path) / "Torch"
    steps = [
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DTorch_DIR={torch_dir}",
         "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(tmp_path), "-j2"],
        ["ctest", "--test-dir", str(tmp_path), "--output-on-failure"],
    ]  # fmt: skip
    for command in steps:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"{' '.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    assert "100% tests passed" in result.stdout
