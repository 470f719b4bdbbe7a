"""The prototype layer's min distance: the original two-convolution form, the best eager PyTorch
form, torch.compile of it, and patronus (cpp on CPU, Triton on CUDA); forward, backward and
forward+backward time, and peak memory of forward+backward.

The paper's shapes run everywhere; the large one (P = 2000) only on CUDA. Precisions: float32
(torch's defaults: matmuls in full precision, cuDNN convolutions, i.e. the original form, in
TF32), bf16 autocast, and on CUDA "tf32": float32 with TF32 allowed for matrix products too
(``torch.set_float32_matmul_precision("high")``; the eager form and patronus' Triton kernel then
multiply in TF32).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import activation_mb, device_name, peak_memory_mb, synchronize

from patronus.ops import prototype_min_distance

PAPER_SHAPES = {  # name: (B, D, H, W, P)
    "celeba64": (64, 128, 26, 26, 100),
    "fmnist32": (128, 128, 10, 10, 30),
    "chexpert224": (16, 128, 43, 43, 100),
}
LARGE_SHAPES = {"large": (64, 256, 32, 32, 2000)}
PROVIDERS = ["original", "eager", "compile", "patronus"]
MODES = ["forward", "backward", "forward+backward"]


def original_form(features, prototypes):
    """The original implementation: ||z||^2 and z.p by two conv2d calls, relu, min by max-pool."""
    weights = prototypes[:, :, None, None]
    ones = torch.ones_like(weights)
    patch_norms = F.conv2d(features**2, ones)
    cross = F.conv2d(features, weights)
    distances = F.relu(patch_norms - 2 * cross + (prototypes**2).sum(1).view(-1, 1, 1))
    return -F.max_pool2d(-distances, kernel_size=distances.shape[2:]).flatten(1)


def eager_form(features, prototypes):
    """The best eager PyTorch form: one matmul with the norms, clamp, min."""
    z = features.flatten(2)  # (B, D, N)
    cross = torch.matmul(prototypes, z)  # (B, P, N)
    distances = z.square().sum(1, keepdim=True) - 2 * cross + prototypes.square().sum(1)[:, None]
    return distances.clamp_min(0).min(dim=2).values


def patronus_form(features, prototypes):
    return prototype_min_distance(features, prototypes)[0]


_compiled = {}


def provider_fn(name):
    if name == "compile":
        if "eager" not in _compiled:
            _compiled["eager"] = torch.compile(eager_form)
        return _compiled["eager"]
    return {"original": original_form, "eager": eager_form, "patronus": patronus_form}[name]


def saved_for_backward(fn, features, prototypes, provider) -> float | None:
    if provider == "compile":  # saved-tensor hooks do not reach into compiled graphs
        return None
    inputs = (features.detach().requires_grad_(), prototypes.detach().requires_grad_())
    return activation_mb(fn, inputs)


def shapes(device):
    return {**PAPER_SHAPES, **(LARGE_SHAPES if device.type == "cuda" else {})}


def pytest_generate_tests(metafunc):
    if "shape_name" in metafunc.fixturenames:
        names = list(PAPER_SHAPES) + list(LARGE_SHAPES)
        metafunc.parametrize("shape_name", names)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "tf32"])
def test_min_distance(benchmark, provider, mode, precision, shape_name, device):
    if shape_name not in shapes(device):
        pytest.skip("the large shape runs on CUDA only")
    if precision != "float32" and device.type != "cuda":
        pytest.skip(f"{precision} is measured on CUDA")
    with tf32_products() if precision == "tf32" else contextlib.nullcontext():
        _measure(benchmark, provider, mode, precision, shape_name, device)


@contextlib.contextmanager
def tf32_products():
    """float32 matrix products in TF32 (as torch.set_float32_matmul_precision("high") allows)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _measure(benchmark, provider, mode, precision, shape_name, device):
    batch, dim, height, width, num = shapes(device)[shape_name]
    torch.manual_seed(0)
    # bf16 as in bf16 autocast training: bf16 features from the encoder, fp32 prototypes
    amp = precision == "bfloat16"
    dtype = torch.bfloat16 if amp else torch.float32
    features = torch.randn(batch, dim, height, width, device=device, dtype=dtype)
    prototypes = torch.rand(num, dim, device=device)
    form = provider_fn(provider)

    def fn(f, p):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return form(f, p)

    def forward_backward():
        f = features.detach().requires_grad_()
        p = prototypes.detach().requires_grad_()
        fn(f, p).float().sum().backward()
        synchronize(device)

    forward_backward()  # warm-up (and compilation)
    benchmark.extra_info.update(
        provider=provider, mode=mode, shape=shape_name, batch=batch, kind="min distance",
        dims=f"B={batch} D={dim} {height}x{width} P={num}",
        dtype="tf32" if precision == "tf32" else str(dtype).split(".")[-1],
        device=device_name(device), peak_mb=peak_memory_mb(forward_backward, device),
        activation_mb=saved_for_backward(fn, features, prototypes, provider),
        product_flops=2 * batch * height * width * num * dim,
    )  # fmt: skip
    benchmark.group = f"min distance {shape_name} {precision} {mode}"
    if mode == "forward":

        @torch.no_grad()
        def forward():
            fn(features, prototypes)
            synchronize(device)

        benchmark(forward)
    elif mode == "backward":

        def setup():
            f = features.detach().requires_grad_()
            p = prototypes.detach().requires_grad_()
            return (fn(f, p).float().sum(),), {}

        def backward(loss):
            loss.backward()
            synchronize(device)

        benchmark.pedantic(backward, setup=setup, rounds=10, warmup_rounds=1)
    else:
        benchmark(forward_backward)
