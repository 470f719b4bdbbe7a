"""The diffusion training objective: noise prediction MSE at drawn timesteps."""

from __future__ import annotations

import torch

from patronus.ops import q_sample


def sample_timesteps(
    batch: int,
    timesteps: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    bias: float = 0.0,
) -> torch.Tensor:
    """(B,) int64 timesteps in {0, ..., T - 1} (every step is trained, t = 0 included).

    ``bias = 0``: uniform. ``bias = b > 0`` tilts the draw towards high noise levels, with
    density proportional to (t / T)^b: t = floor(T u^(1 / (1 + b))), u ~ U(0, 1). With b = 1
    three quarters of the draws land in the noisier half, where the denoiser has to take the
    image's content from the prototype activations.
    """
    if bias < 0:
        raise ValueError(f"bias must be >= 0, got {bias}")
    if bias == 0:
        return torch.randint(0, timesteps, (batch,), device=device, generator=generator)
    u = torch.rand(batch, device=device, generator=generator, dtype=torch.float64)
    t = (timesteps * u.pow(1.0 / (1.0 + bias))).floor().long()
    return t.clamp_(max=timesteps - 1)


def noisy_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    x0 (B, ...), t (B,) int64, noise like x0, alphas_cumprod (T,) float64 on x0's device.
    """
    abar = alphas_cumprod[t]
    return q_sample(x0, noise, abar.sqrt(), (1.0 - abar).sqrt())
