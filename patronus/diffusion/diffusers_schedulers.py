"""Drop-in diffusers schedulers whose step is the fused ``patronus::scheduler_step``.

``PatronusDDIMScheduler``, ``PatronusDDPMScheduler``, ``PatronusDDIMInverseScheduler`` and
``PatronusDPMSolverMultistepScheduler`` subclass diffusers' ``DDIMScheduler``, ``DDPMScheduler``,
``DDIMInverseScheduler`` and ``DPMSolverMultistepScheduler`` (so
``SchedulerMixin``/``ConfigMixin``, configs, ``set_timesteps`` and ``from_config`` are theirs)
and replace ``step()`` by one fused pass with the same outputs (``prev_sample``,
``pred_original_sample``) for the same inputs, noise included: noise comes from
the same ``generator`` calls (or ``variance_noise``) as in diffusers. Swap them into a pipeline:

    pipe.scheduler = PatronusDDIMScheduler.from_config(pipe.scheduler.config)

A pipeline saved with one of them records this module in its ``model_index.json``; diffusers
loads such components only from modules already imported, so import this module before
``DiffusionPipeline.from_pretrained``. Pipelines whose ``__init__`` converts the scheduler
(``DDIMPipeline`` turns any scheduler into a stock ``DDIMScheduler``) drop the fused step: set
``pipe.scheduler`` after constructing or loading those.

Cases the fused step does not cover run diffusers' own ``step`` (DDPM with learned or log
variances; DPM-Solver other than "dpmsolver++" with the "midpoint" solver type on the discrete
schedule's own sigmas, e.g. Karras sigmas or the SDE variants). diffusers is an optional
dependency (``pip install diffusers``).
"""

from __future__ import annotations

from typing import Any

import torch

from patronus.errors import MissingDependencyError

try:
    # from the defining modules (the same classes as diffusers' lazy top-level names, which a
    # type checker resolves to placeholders without attributes)
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler, DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddim_inverse import DDIMInverseScheduler
    from diffusers.schedulers.scheduling_ddim_inverse import (
        DDIMSchedulerOutput as DDIMInverseSchedulerOutput,  # a class of its own, same fields
    )
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler, DDPMSchedulerOutput
    from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as error:  # pragma: no cover - exercised without diffusers only
    raise MissingDependencyError(
        "patronus.diffusion.diffusers_schedulers needs diffusers: pip install diffusers"
    ) from error

from patronus.diffusion.parametrization import dynamic_thresholds, predicted_x0
from patronus.ops.scheduler import scheduler_step

# diffusers' pipeline loader finds a component's loading method by looking the base classes it
# knows (``SchedulerMixin`` among them) up by name in the component's module: keep it here.
__all__ = [
    "PatronusDDIMInverseScheduler",
    "PatronusDDIMScheduler",
    "PatronusDDPMScheduler",
    "PatronusDPMSolverMultistepScheduler",
    "SchedulerMixin",
]

_FUSED_DDPM_VARIANCES = {"fixed_small": "posterior", "fixed_large": "beta"}


def _clipping(scheduler, sample, model_output, timestep) -> dict:
    if scheduler.config.thresholding:
        config = scheduler.config
        abar = scheduler.alphas_cumprod[timestep].to(sample.device, sample.dtype)
        x0 = predicted_x0(sample, model_output, abar, config.prediction_type)
        threshold = dynamic_thresholds(
            x0, config.dynamic_thresholding_ratio, config.sample_max_value
        )
        return {"threshold": threshold}
    if getattr(scheduler.config, "clip_sample", False):
        return {"clip": scheduler.config.clip_sample_range}
    return {}


class PatronusDDIMScheduler(DDIMScheduler):
    """diffusers' DDIMScheduler with a fused ``step``."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        timestep = int(timestep)
        prev = timestep - self.config.num_train_timesteps // self.num_inference_steps
        # diffusers' final level is 1 (set_alpha_to_one) or abar_0: levels -1 and 0 here
        target = prev if prev >= 0 else (-1 if self.config.set_alpha_to_one else 0)
        if eta > 0 and variance_noise is None:
            variance_noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device,
                dtype=model_output.dtype,
            )  # fmt: skip
        prev_sample, pred_x0 = scheduler_step(
            sample, model_output, timestep, target, self.alphas_cumprod, mode="ddim",
            prediction=self.config.prediction_type, eta=eta,
            recompute_eps=use_clipped_model_output, noise=variance_noise if eta > 0 else None,
            **_clipping(self, sample, model_output, timestep),
        )  # fmt: skip
        if not return_dict:
            return prev_sample, pred_x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


class PatronusDDPMScheduler(DDPMScheduler):
    """diffusers' DDPMScheduler with a fused ``step`` (fixed_small / fixed_large variances)."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        variance = _FUSED_DDPM_VARIANCES.get(self.variance_type)
        if variance is None or model_output.shape[1] != sample.shape[1]:
            return super().step(model_output, timestep, sample, generator, return_dict)
        t = int(timestep)
        # any level below 0 is the clean data (abar = 1), as diffusers' step reads it: for the
        # last respaced step diffusers 0.30 gives t - T // steps (-5 for 20 of 100 steps), later
        # versions -1
        prev = max(int(self.previous_timestep(t)), -1)
        noise = None
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device,
                dtype=model_output.dtype,
            )  # fmt: skip
        else:  # the last step adds no noise; the op still wants a source
            noise = torch.zeros_like(sample)
        prev_sample, pred_x0 = scheduler_step(
            sample, model_output, t, prev, self.alphas_cumprod, mode="ddpm",
            prediction=self.config["prediction_type"], variance=variance, recompute_eps=False,
            noise=noise, **_clipping(self, sample, model_output, t),
        )  # fmt: skip
        if not return_dict:
            return prev_sample, pred_x0
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


class PatronusDDIMInverseScheduler(DDIMInverseScheduler):
    """diffusers' DDIMInverseScheduler with a fused ``step``: the deterministic DDIM update run
    towards noise (x_next = sqrt(abar_next) x0 + sqrt(1 - abar_next) eps).

    diffusers' convention: ``timestep`` is the level the step goes *to* (the model was evaluated
    there); the sample sits ``num_train_timesteps // num_inference_steps`` below it, at clean data
    (abar = 1, or abar_0 without ``set_alpha_to_one``) for the first step. Clipping clamps x0 and
    keeps the model's noise, as diffusers does."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> DDIMInverseSchedulerOutput | tuple:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        target = int(timestep)
        current = min(
            target - self.config.num_train_timesteps // self.num_inference_steps,
            self.config.num_train_timesteps - 1,
        )
        if current < 0:  # the first step starts from clean data: abar = 1 (level -1) or abar_0
            current = -1 if self.config.set_alpha_to_one else 0
        clip = {"clip": self.config.clip_sample_range} if self.config.clip_sample else {}
        next_sample, pred_x0 = scheduler_step(
            sample, model_output, current, target, self.alphas_cumprod, mode="ddim",
            prediction=self.config.prediction_type, recompute_eps=False, **clip,
        )  # fmt: skip
        if not return_dict:
            return next_sample, pred_x0
        return DDIMInverseSchedulerOutput(prev_sample=next_sample, pred_original_sample=pred_x0)


# DPMSolverMultistepScheduler settings the fused step covers (others run diffusers' own step)
_DPM_SIGMA_OPTIONS = (
    "use_karras_sigmas",
    "use_lu_lambdas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_flow_sigmas",
)


class PatronusDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """diffusers' DPMSolverMultistepScheduler with a fused ``step`` for ``algorithm_type``
    "dpmsolver++" and ``solver_type`` "midpoint" (diffusers' defaults) on the discrete
    schedule's sigmas: one pass of ``patronus::scheduler_step`` with the previous x0 predictions
    passed in, and diffusers' bookkeeping (``model_outputs``, ``lower_order_nums``, the
    lower-order final steps) kept as diffusers keeps it."""

    def _fused(self) -> bool:
        config: Any = self.config  # a FrozenDict whose keys read as attributes
        return (
            config.algorithm_type == "dpmsolver++"
            and config.solver_type == "midpoint"
            and config.variance_type is None
            and config.prediction_type in ("epsilon", "sample", "v_prediction")
            and not any(getattr(config, name, False) for name in _DPM_SIGMA_OPTIONS)
        )

    def _order(self) -> int:
        """The order of the step at ``step_index``, by diffusers' rules."""
        config: Any = self.config
        steps, index = len(self.timesteps), self.step_index
        lower_order_final = index == steps - 1 and (
            config.euler_at_final
            or (config.lower_order_final and steps < 15)
            or config.final_sigmas_type == "zero"
        )
        lower_order_second = index == steps - 2 and config.lower_order_final and steps < 15
        if config.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            return 1
        if config.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            return 2
        return 3

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        if not self._fused():
            return super().step(
                model_output, timestep, sample, generator, variance_noise, return_dict
            )
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self._init_step_index(timestep)
        index, order = self.step_index, self._order()
        current = int(self.timesteps[index])
        if index + 1 < len(self.timesteps):
            target = int(self.timesteps[index + 1])
        else:  # the final sigma: zero (clean data, level -1) or sigma_min (level 0)
            target = -1 if self.config.final_sigmas_type == "zero" else 0
        previous = [self.model_outputs[-1 - k] for k in range(order - 1)]
        levels = [int(self.timesteps[index - 1 - k]) for k in range(order - 1)]
        prev_sample, x0 = scheduler_step(
            sample, model_output, current, target, self.alphas_cumprod, mode="dpmsolver++",
            prediction=self.config.prediction_type, previous_x0=previous,
            previous_timestep=levels, **_clipping(self, sample, model_output, current),
        )  # fmt: skip
        for k in range(self.config.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
