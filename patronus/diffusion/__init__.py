"""Noise schedules, forward noising, training loss and samplers (model-agnostic)."""

from patronus.diffusion.loss import noisy_sample, sample_timesteps
from patronus.diffusion.samplers import (
    SamplerOptions,
    SamplerStep,
    StepOptions,
    ddim_inversion,
    ddim_sampling,
    ddpm_sampling,
    dpm_solver_sampling,
    run_sampler,
)
from patronus.diffusion.schedules import NoiseSchedule, cosine_betas, linear_betas
from patronus.diffusion.timesteps import respaced_timesteps, solver_timesteps

__all__ = [
    "NoiseSchedule",
    "SamplerOptions",
    "SamplerStep",
    "StepOptions",
    "cosine_betas",
    "ddim_inversion",
    "ddim_sampling",
    "ddpm_sampling",
    "dpm_solver_sampling",
    "linear_betas",
    "noisy_sample",
    "respaced_timesteps",
    "run_sampler",
    "sample_timesteps",
    "solver_timesteps",
]
