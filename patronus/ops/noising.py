"""The forward noising op ``patronus::q_sample``: x_t = a_b x0 + s_b eps, with per-sample scales.

Backends (``patronus._backend``): ``cpp``, the extension's CPU kernel ``patronus::q_sample_fwd``
(one parallel pass, float32 opmath for half types); ``torch``, the reference ``q_sample_ref``
(every device; also the test oracle). The op is linear, so its gradient is written out once for
every backend: d/dx0 = a_b g, d/dnoise = s_b g, d/da_b = sum(g x0[b]), d/ds_b = sum(g noise[b]).
"""

from __future__ import annotations

import torch

from patronus import _backend
from patronus.ops._validation import check_float, check_same_device, opmath_dtype


# ------------------------------------------------------------------------------------ checks
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
    if x0.dim() == 0:
        raise ValueError("x0 must have a batch dimension (B, ...), got a scalar")
    for name, scale in (("signal_scale", signal_scale), ("noise_scale", noise_scale)):
        check_float(name, scale)
        if scale.dim() != 1 or scale.shape[0] != x0.shape[0]:
            raise ValueError(f"{name} must be (B,) = ({x0.shape[0]},), got {tuple(scale.shape)}")


# -------------------------------------------------------------------------------- reference
def _per_sample(scale: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) in ``dtype``, broadcastable against ``like``."""
    return scale.to(dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def q_sample_ref(
    x0: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Reference: x0 (B, ...), noise like x0, scales (B,) -> x_t like x0 (opmath float32)."""
    _check_inputs(x0, noise, signal_scale, noise_scale)
    dtype = opmath_dtype(x0)
    signal, sigma = _per_sample(signal_scale, x0, dtype), _per_sample(noise_scale, x0, dtype)
    return (signal * x0.to(dtype) + sigma * noise.to(dtype)).to(x0.dtype)


# --------------------------------------------------------------------------------- backends
BACKENDS = _backend.OpBackends(
    "q_sample", {"cpp": _backend.cpp_probe("q_sample_fwd"), "torch": _backend.torch_probe}
)


# -------------------------------------------------------------------------------- custom op
@torch.library.custom_op("patronus::q_sample", mutates_args=())
def _q_sample_op(
    x0: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    if BACKENDS.select(x0.device).name == "cpp":
        return torch.ops.patronus.q_sample_fwd(x0, noise, signal_scale, noise_scale)
    return q_sample_ref(x0, noise, signal_scale, noise_scale).contiguous()


@_q_sample_op.register_fake
def _q_sample_fake(x0, noise, signal_scale, noise_scale):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


def _q_sample_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _sum_per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): the sum over every dimension but the first."""
    return values if values.dim() == 1 else values.sum(dim=tuple(range(1, values.dim())))


def _q_sample_backward(ctx, grad):
    x0, noise, signal_scale, noise_scale = ctx.saved_tensors
    dtype = opmath_dtype(x0)
    g = grad.to(dtype)
    grads: list[torch.Tensor | None] = [None, None, None, None]
    for i, (scale, data) in enumerate(((signal_scale, x0), (noise_scale, noise))):
        if ctx.needs_input_grad[i]:
            grads[i] = (_per_sample(scale, g, dtype) * g).to(data.dtype)
        if ctx.needs_input_grad[i + 2]:
            grads[i + 2] = _sum_per_sample(g * data.to(dtype)).to(scale.dtype)
    return tuple(grads)


_q_sample_op.register_autograd(_q_sample_backward, setup_context=_q_sample_setup)


# ------------------------------------------------------------------------------- public API
def q_sample(
    x0: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor, noise_scale: torch.Tensor
) -> torch.Tensor:
    """Noise a batch: ``signal_scale[b] * x0[b] + noise_scale[b] * noise[b]``.

    Args:
        x0: (B, ...) clean data, fp16/bf16/fp32/fp64; noise: like x0;
        signal_scale, noise_scale: (B,) any float dtype, on x0's device.

    Returns:
        x_t like x0 (contiguous), differentiable in all four inputs.
    """
    _check_inputs(x0, noise, signal_scale, noise_scale)
    return torch.ops.patronus.q_sample(x0, noise, signal_scale, noise_scale)
