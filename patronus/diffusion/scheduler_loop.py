"""Sampling with any diffusers scheduler: the loop diffusers' pipelines run, as a trajectory.

``scheduler_sampling`` calls ``scheduler.set_timesteps(steps)`` and then, per timestep, the
network on ``scheduler.scale_model_input(x, t)`` and ``scheduler.step(output, t, x)`` (with the
``generator`` where the step takes one), as ``DDPMPipeline`` / ``DDIMPipeline`` do. With
(conditioned, null) outputs it forms null + w (conditioned - null) before the step, as diffusers'
guided pipelines do. Duck-typed: diffusers is needed only to build the scheduler.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch

from patronus.diffusion.parametrization import predicted_x0
from patronus.diffusion.samplers import AfterStep, EpsFn, SamplerStep, handed_on
from patronus.diffusion.schedules import NoiseSchedule


def check_scheduler_schedule(scheduler: Any, schedule: NoiseSchedule) -> None:
    """A diffusers scheduler must noise as the model was trained to denoise: the same number of
    training timesteps and the same alphas_cumprod (to float32 precision)."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError(
            f"{type(scheduler).__name__} has no alphas_cumprod: a DDPM-family diffusers "
            "scheduler (DDPM, DDIM, DPM-Solver, ...) is needed"
        )
    ours = schedule.alphas_cumprod.to(torch.float32)
    if abar.shape != ours.shape or not torch.allclose(abar.cpu().float(), ours, rtol=1e-5):
        raise ValueError(
            f"the scheduler's noise schedule ({len(abar)} steps, alphas_cumprod[-1] = "
            f"{float(abar[-1]):.3g}) is not the model's ({len(ours)} steps, "
            f"{float(ours[-1]):.3g}): build it with the model's num_train_timesteps and betas"
        )


def scheduler_sampling(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    scheduler: Any,
    steps: int,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
    after_step: AfterStep | None = None,
) -> Iterator[SamplerStep]:
    """The trajectory of ``scheduler``'s loop from x_T (B, C, H, W) over ``steps`` inference steps.

    ``pred_x0`` of each step is the scheduler's ``pred_original_sample`` where it reports one, else
    the x0 its output predicts at t (``config.prediction_type``); ``sample_t`` the scheduler's next
    timestep (-1 after the last). ``after_step``: see
    :data:`patronus.diffusion.samplers.AfterStep`."""
    scheduler.set_timesteps(steps, device=x_T.device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    prediction = scheduler.config.prediction_type
    x = x_T * scheduler.init_noise_sigma
    # the levels as Python ints, read from the device once (each step reports its own and the next)
    levels = [int(t) for t in scheduler.timesteps.tolist()]
    for index, t in enumerate(scheduler.timesteps):
        level = t.to(device=x.device, dtype=torch.long).repeat(x.shape[0])
        output = eps_fn(scheduler.scale_model_input(x, t), level)
        if isinstance(output, tuple):
            conditioned, null = output
            output = null + guidance_scale * (conditioned - null)
        extra = {"generator": generator} if takes_generator else {}
        result = scheduler.step(output, t, x, **extra)
        x0 = getattr(result, "pred_original_sample", None)
        if x0 is None:
            abar = scheduler.alphas_cumprod[levels[index]].to(x.device, x.dtype)
            x0 = predicted_x0(x, output, abar, prediction)
        following = levels[index + 1] if index + 1 < len(levels) else -1
        step = handed_on(
            SamplerStep(index, levels[index], x, x0, result.prev_sample, following), after_step
        )
        yield step
        x = step.sample
