"""Samplers: DDPM ancestral, DDIM (any eta, respaced steps) and DDIM inversion.

Each sampler is a generator yielding one :class:`SamplerStep` per network evaluation, so callers
can trace the trajectory (t, x_t, predicted x0); :func:`run_sampler` drives one to the end with an
optional callback and progress bar. The denoiser is any ``eps_fn(x_t, t) -> eps`` with t an int64
(B,) tensor. Arithmetic runs in the sample's dtype with coefficients from float64 tables.

Equations (abar_t = prod alpha, x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)):
- DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(abar_prev) x0_hat
  + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
  sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
- DDPM (Ho et al. 2020, eq. 7): x_prev = posterior mean(x0_hat, x_t) + sigma z, with sigma^2 the
  posterior variance beta_t (1 - abar_prev) / (1 - abar_t) ("posterior") or beta_t ("beta").
- DDIM inversion: the DDIM (eta = 0) update run from clean data up to T - 1; the step from level
  a to level b > a evaluates eps at (x_a, b), mirroring the decoder's step from b to a.
The step after t = 0 reaches the clean data (abar = 1), so the last sample is x0_hat itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from patronus.diffusion.schedules import NoiseSchedule
from patronus.diffusion.timesteps import respaced_timesteps

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SAMPLERS = ("ddim", "ddpm")
DDPM_VARIANCES = ("posterior", "beta")


@dataclass(frozen=True)
class SamplerStep:
    """One network evaluation of a sampler."""

    index: int  # 0-based position in the trajectory
    t: int  # timestep the network was evaluated at
    x_t: torch.Tensor  # the input sample of this step (B, C, H, W)
    pred_x0: torch.Tensor  # the predicted clean sample (B, C, H, W)
    sample: torch.Tensor  # the step's output: the next (less noisy, or for inversion noisier) x


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)


def predict_eps(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)


def _clip(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float, clip_x0: bool):
    """x0_hat, and eps consistent with it (re-derived when x0_hat was clipped to [-1, 1])."""
    x0 = predict_x0(x_t, eps, abar_t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = predict_eps(x_t, x0, abar_t)
    return x0, eps


def _timestep_batch(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ddim_update(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    abar_t: float,
    abar_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from abar_t to abar_prev; returns (x_prev, x0_hat)."""
    x0, eps = _clip(x_t, eps, abar_t, clip_x0)
    sigma = 0.0
    if eta > 0:
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("DDIM with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def ddpm_update(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
    variance: str = "posterior",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDPM ancestral step from t to t - 1; returns (x_prev, x0_hat)."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {variance!r}")
    abar_t, abar_prev = schedule.abar(t), schedule.abar(t - 1)
    beta_t = float(schedule.betas[t])
    x0, _ = _clip(x_t, eps, abar_t, clip_x0)
    coef_x0 = math.sqrt(abar_prev) * beta_t / (1 - abar_t)
    coef_xt = math.sqrt(1 - beta_t) * (1 - abar_prev) / (1 - abar_t)
    x_prev = coef_x0 * x0 + coef_xt * x_t
    if t > 0:
        var = beta_t * (1 - abar_prev) / (1 - abar_t) if variance == "posterior" else beta_t
        if noise is None:
            raise ValueError("DDPM steps with t > 0 need noise")
        x_prev = x_prev + math.sqrt(var) * noise
    return x_prev, x0


def ddim_sampling(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    eta: float = 0.0,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[SamplerStep]:
    """DDIM from x_T over ``steps`` respaced timesteps down to clean data."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    timesteps = respaced_timesteps(schedule.timesteps, steps)
    x = x_T
    for index in range(len(timesteps) - 1, -1, -1):
        t = timesteps[index]
        t_prev = timesteps[index - 1] if index > 0 else -1
        eps = eps_fn(x, _timestep_batch(x, t))
        abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev)
        noise = _noise_like(x, generator) if eta > 0 and t_prev >= 0 else None
        x_prev, x0 = ddim_update(x, eps, abar_t, abar_prev, eta, noise, clip_x0)
        yield SamplerStep(len(timesteps) - 1 - index, t, x, x0, x_prev)
        x = x_prev


def ddpm_sampling(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    variance: str = "posterior",
) -> Iterator[SamplerStep]:
    """DDPM ancestral sampling over all T steps."""
    x = x_T
    for index, t in enumerate(range(schedule.timesteps - 1, -1, -1)):
        eps = eps_fn(x, _timestep_batch(x, t))
        noise = _noise_like(x, generator) if t > 0 else None
        x_prev, x0 = ddpm_update(x, eps, t, schedule, noise, clip_x0, variance)
        yield SamplerStep(index, t, x, x0, x_prev)
        x = x_prev


def ddim_inversion(
    eps_fn: EpsFn, x0: torch.Tensor, schedule: NoiseSchedule, steps: int = 50
) -> Iterator[SamplerStep]:
    """Deterministic DDIM encoding of clean data x0 into x_{T-1} (= x_T of the decoder)."""
    timesteps = respaced_timesteps(schedule.timesteps, steps)
    levels = [-1, *timesteps]
    x = x0
    for index in range(len(timesteps)):
        a, b = levels[index], levels[index + 1]
        eps = eps_fn(x, _timestep_batch(x, b))
        x_next, pred_x0 = ddim_update(x, eps, schedule.abar(a), schedule.abar(b))
        yield SamplerStep(index, b, x, pred_x0, x_next)
        x = x_next


def run_sampler(
    trajectory: Iterator[SamplerStep],
    callback: Callable[[SamplerStep], None] | None = None,
    progress: bool = False,
    total: int | None = None,
    description: str = "sampling",
) -> torch.Tensor:
    """Drive a sampler to its end; returns the last step's ``sample``."""
    if progress:
        from tqdm.auto import tqdm

        trajectory = tqdm(trajectory, total=total, desc=description, leave=False)
    last = None
    for step in trajectory:
        if callback is not None:
            callback(step)
        last = step
    if last is None:
        raise ValueError("the sampler made no steps")
    return last.sample
