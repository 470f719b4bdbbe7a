"""Every Triton kernel, every autotune configuration, compiles for the GPUs we run on (sm_90:
H100/H200) without a GPU: the tl.dot paths that the interpreter does not execute are at least
lowered to PTX and cubin, with shared memory within the device's limit. Both with the Triton
installed here and with the GPU machines' own (3.6, which their torch builds ship: `make test`
installs it in a folder of its own and names it in PATRONUS_GPU_TRITON)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_kernels.py")
GPU_TRITON_VAR = "PATRONUS_GPU_TRITON"
GPU_TRITON_VERSION = "3.6.0"


def compile_for_hopper(triton_dir: Path | None = None) -> tuple[str, Path]:
    """Run the compile script (with ``triton_dir`` first on the path) and check its output:
    (the Triton version it used, that Triton's folder)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(triton_dir), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "90"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    header, *lines = result.stdout.strip().splitlines()
    assert len(lines) == 27 and all(line.endswith(" ok") for line in lines), result.stdout
    _, version, folder = header.split(" ", 2)
    return version, Path(folder)


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    compile_for_hopper()


@pytest.mark.slow
def test_kernels_compile_for_hopper_with_the_gpu_machines_triton():
    given = os.environ.get(GPU_TRITON_VAR)
    if not given:
        pytest.skip(
            f"{GPU_TRITON_VAR} names no folder holding Triton {GPU_TRITON_VERSION} (`make test` "
            f"sets it; by hand: pip install --no-deps --target DIR triton=={GPU_TRITON_VERSION})"
        )
    triton_dir = Path(given).resolve()
    assert (triton_dir / "triton").is_dir(), f"{GPU_TRITON_VAR}={given}: no triton package there"
    version, folder = compile_for_hopper(triton_dir)
    assert (version, folder) == (GPU_TRITON_VERSION, triton_dir / "triton")
