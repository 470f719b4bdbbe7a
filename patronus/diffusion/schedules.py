"""Noise schedules as pure functions of the step count; all tables in float64."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas (T,) float64, from DDPM; the endpoints scale by 1000/T for T != 1000."""
    scale = 1000.0 / timesteps
    if beta_end * scale >= 1.0:
        raise ValueError(
            f"a linear schedule scaled to {timesteps} steps has beta_T = {beta_end * scale:.3g} "
            f">= 1; use at least {int(1000 * beta_end) + 1} steps or the cosine schedule"
        )
    return torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021): abar(t) = f(t) / f(0).

    f(t) = cos^2((t/T + s) / (1 + s) * pi/2).

    Returns betas (T,) float64, beta_t = 1 - abar(t+1)/abar(t), clipped at ``max_beta``.
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


@dataclass(frozen=True)
class NoiseSchedule:
    """Float64 tables of a discrete schedule, indexed by the integer step t in [0, T)."""

    betas: torch.Tensor  # (T,)

    @classmethod
    def from_name(cls, name: str, timesteps: int) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
        return cls(SCHEDULES[name](timesteps))

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s <= t} alpha_s, (T,) float64."""
        return torch.cumprod(self.alphas, dim=0)

    def abar(self, t: int) -> float:
        """abar_t as a Python float; t = -1 means the clean data (abar = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])
