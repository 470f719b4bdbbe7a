"""The diffusion training objective: noise prediction MSE at uniformly drawn timesteps."""

from __future__ import annotations

import torch

from patronus.ops import q_sample


def sample_timesteps(
    batch: int, timesteps: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """t ~ U{0, ..., T - 1}, (B,) int64 (every step is trained, t = 0 included)."""
    return torch.randint(0, timesteps, (batch,), device=device, generator=generator)


def noisy_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    x0 (B, ...), t (B,) int64, noise like x0, alphas_cumprod (T,) float64 on x0's device.
    """
    abar = alphas_cumprod[t]
    return q_sample(x0, noise, abar.sqrt(), (1.0 - abar).sqrt())
