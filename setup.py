"""Builds the optional ``patronus._C`` extension; all metadata lives in pyproject.toml.

Each op's kernels live in csrc/<op>/: cpu.cpp is compiled wherever a C++ compiler exists, cuda.cu
only where the installed torch has CUDA and nvcc is found (csrc/schema.cpp declares the kernels,
csrc/module.cpp is the Python module); torch refuses an nvcc of another major CUDA version than
its own, so then only the CPU kernels are built, with a message saying why (``patronus info``
lists the compiled kernels per device and says so too; the CUDA ops then run their PyTorch
references). ``PATRONUS_BUILD_EXT=0`` skips the extension: the package then runs on its
pure-PyTorch backends and ``patronus.info()`` says so.
Build with ``pip install --no-build-isolation -e .`` (build isolation would fetch another torch).
"""

import glob
import os
import re
import subprocess

from setuptools import setup


def cuda_toolkit_mismatch(cuda_home: str, torch_cuda: str) -> str | None:
    """Why the CUDA kernels cannot be built with the toolkit in ``cuda_home`` for a torch built
    with CUDA ``torch_cuda`` (None: they can)."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        return f"{nvcc} does not run ({error})"
    release = re.search(r"release (\d+)\.(\d+)", version.stdout)
    if release is None:
        return f"{nvcc} --version names no CUDA release"
    if release.group(1) != torch_cuda.split(".")[0]:
        return (
            f"{nvcc} is CUDA {release.group(1)}.{release.group(2)} but torch was built with CUDA "
            f"{torch_cuda} (set CUDA_HOME to a CUDA {torch_cuda.split('.')[0]} toolkit)"
        )
    return None


def extension_modules():
    if os.environ.get("PATRONUS_BUILD_EXT", "1") == "0":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/cpu.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*/cuda.cu"))
    use_cuda = torch.version.cuda is not None and CUDA_HOME is not None and bool(cuda_sources)
    if use_cuda:
        mismatch = cuda_toolkit_mismatch(CUDA_HOME, torch.version.cuda)
        if mismatch is not None:
            print(f"patronus: building the CPU kernels only, not the CUDA ones: {mismatch}")
            use_cuda = False
    # -ffp-contract=off: vector and scalar loops round alike (the CPU kernels rely on it for ties);
    # the OpenMP flags torch was built with make at::parallel_for use torch's threads (without
    # them its OpenMP pragmas are ignored and every loop runs on one thread)
    openmp = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    compile_args = {"cxx": ["-O3", "-std=c++17", "-ffp-contract=off"]}
    link_args = []
    if openmp:
        compile_args["cxx"].append("-fopenmp")
        link_args.append("-fopenmp")
    if use_cuda:
        compile_args["nvcc"] = ["-O3", "--use_fast_math"]
        module = CUDAExtension(
            "patronus._C",
            sources + cuda_sources,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    else:
        module = CppExtension(
            "patronus._C", sources, extra_compile_args=compile_args, extra_link_args=link_args
        )
    return [module], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
