"""Compile every Triton kernel ahead of time for NVIDIA GPUs, without a GPU (run by
test_kernels_compile.py in a process without TRITON_INTERPRET). Prints the Triton it compiles with
(version and folder), then one line per kernel."""

import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner

from patronus.kernels import prototype_distance as K

POINTERS = {
    "_min_distance_fwd_kernel": [
        "Z",
        "PROTO",
        "CENTRED",
        "CENTER",
        "PROTO_NORM",
        "OUT_DIST",
        "OUT_INDEX",
    ],
    "_distance_map_kernel": ["Z", "CENTRED", "CENTER", "PROTO_NORM", "OUT"],
    "_grad_features_kernel": ["Z", "PROTO", "GRAD", "INDEX", "OUT"],
    "_grad_features_atomic_kernel": ["Z", "PROTO", "GRAD", "INDEX", "OUT32"],
    "_grad_prototypes_kernel": ["Z", "PROTO", "GRAD", "INDEX", "OUT"],
}
POINTER_TYPES = {"Z": "FEATURES", "INDEX": "*i64", "OUT_INDEX": "*i64", "OUT": "FEATURES"}


def signature(jit_fn, features: str) -> dict[str, str]:
    result = {}
    for name in jit_fn.arg_names:
        if name in POINTERS[jit_fn.__name__]:
            kind = POINTER_TYPES.get(name, "*fp32")
            result[name] = features if kind == "FEATURES" else kind
        elif name.isupper() and name not in ("N", "D", "NUM_P", "BATCH"):
            result[name] = "constexpr"
        else:
            result[name] = "i32"
    if jit_fn.__name__ in ("_distance_map_kernel", "_grad_prototypes_kernel"):
        result["OUT"] = "*fp32"
    return result


def main(capability: int) -> None:
    print(f"triton {triton.__version__} {Path(triton.__file__).parent}")
    target = GPUTarget("cuda", capability, 32)
    limit = {80: 163 * 1024, 90: 227 * 1024}[capability]
    cases = []
    for kernel in (K._min_distance_fwd_kernel, K._distance_map_kernel):
        for config in kernel.configs:  # every autotune config on the hot (bf16) path
            cases.append((kernel, config, "*bf16", {"DOT_DTYPE": "bf16"}))
        for features, dot in (("*fp16", "fp16"), ("*fp32", "fp32"), ("*fp32", "tf32")):
            cases.append((kernel, kernel.configs[0], features, {"DOT_DTYPE": dot}))
    for kernel in (K._grad_features_kernel, K._grad_prototypes_kernel):
        for config in kernel.configs:
            cases.append((kernel, config, "*bf16", {}))
    atomic = triton.Config({"BLOCK_P": 32, "BLOCK_D": 64}, num_warps=4)
    cases.append((K._grad_features_atomic_kernel, atomic, "*bf16", {}))
    for kernel, config, features, extra in cases:
        jit_fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        constexprs = {**config.kwargs, **extra}
        source = ASTSource(jit_fn, signature(jit_fn, features), constexprs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled = triton.compile(source, target=target, options=options)
        shared = compiled.metadata.shared
        status = "ok" if shared <= limit else "TOO MUCH SHARED MEMORY"
        print(f"sm_{capability} {jit_fn.__name__} {features} {constexprs} shared={shared} {status}")
        if shared > limit:
            sys.exit(1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
