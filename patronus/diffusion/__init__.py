"""Noise schedules, forward noising, training loss and samplers (model-agnostic)."""

from patronus.diffusion.loss import noisy_sample, sample_timesteps
from patronus.diffusion.samplers import (
    SamplerStep,
    ddim_inversion,
    ddim_sampling,
    ddim_update,
    ddpm_sampling,
    ddpm_update,
    predict_eps,
    predict_x0,
    run_sampler,
)
from patronus.diffusion.schedules import NoiseSchedule, cosine_betas, linear_betas
from patronus.diffusion.timesteps import respaced_timesteps

__all__ = [
    "NoiseSchedule",
    "SamplerStep",
    "cosine_betas",
    "ddim_inversion",
    "ddim_sampling",
    "ddim_update",
    "ddpm_sampling",
    "ddpm_update",
    "linear_betas",
    "noisy_sample",
    "predict_eps",
    "predict_x0",
    "respaced_timesteps",
    "run_sampler",
    "sample_timesteps",
]
