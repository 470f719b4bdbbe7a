"""Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with per-sample coefficients.

The ``cpp`` backend is the ``patronus::q_sample`` op of the compiled extension (CPU kernel,
float32 opmath for half types); ``torch`` is the reference. The op is not differentiable: it
noises data, which never needs a gradient. Inputs that require grad go to the reference.
"""

from __future__ import annotations

import torch

from patronus import _backend
from patronus.ops._validation import check_float, check_same_device, opmath_dtype

_PROBES = {"cpp": _backend.cpp_probe("q_sample"), "torch": _backend.torch_probe}


def _check_inputs(
    x0: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> None:
    for name, tensor in (("x0", x0), ("noise", noise)):
        check_float(name, tensor)
    check_same_device(x0=x0, noise=noise, signal_scale=signal_scale, noise_scale=noise_scale)
    if noise.shape != x0.shape or noise.dtype != x0.dtype:
        raise ValueError(
            f"noise must match x0: got {tuple(noise.shape)} {noise.dtype} for x0 "
            f"{tuple(x0.shape)} {x0.dtype}"
        )
    for name, scale in (("signal_scale", signal_scale), ("noise_scale", noise_scale)):
        if scale.dim() != 1 or scale.shape[0] != x0.shape[0]:
            raise ValueError(f"{name} must be (B,) = ({x0.shape[0]},), got {tuple(scale.shape)}")


def q_sample_ref(
    x0: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Reference: x0 (B, ...), noise like x0, scales (B,) -> x_t like x0 (opmath float32)."""
    _check_inputs(x0, noise, signal_scale, noise_scale)
    dtype = opmath_dtype(x0)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    signal = signal_scale.to(dtype).reshape(shape)
    sigma = noise_scale.to(dtype).reshape(shape)
    return (signal * x0.to(dtype) + sigma * noise.to(dtype)).to(x0.dtype)


def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Noise a batch: ``signal_scale[b] * x0[b] + noise_scale[b] * noise[b]``.

    Args:
        x0: (B, ...) clean data; noise: like x0; signal_scale, noise_scale: (B,) any float dtype.

    Returns:
        x_t like x0.
    """
    choice = backend(x0.device)
    if choice.name == "cpp" and not (x0.requires_grad or noise.requires_grad):
        _check_inputs(x0, noise, signal_scale, noise_scale)
        return torch.ops.patronus.q_sample(x0, noise, signal_scale, noise_scale)
    return q_sample_ref(x0, noise, signal_scale, noise_scale)


def backend(device: torch.device) -> _backend.BackendChoice:
    return _backend.select("q_sample", device, _PROBES)


if _backend.load_extension()[0] is not None:

    @torch.library.register_fake("patronus::q_sample")
    def _q_sample_fake(x0, noise, signal_scale, noise_scale):
        return torch.empty_like(x0)
