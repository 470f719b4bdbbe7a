"""Prototype-gradient guidance of edits: during the late steps of an edit's DDIM decode, nudge the
predicted clean image along the gradient of the edited prototype's activation, as classifier
guidance follows a classifier's gradient (here the model's own prototype layer), until the
activation reaches the value the edit asked for.

Why: at the scale we train on a CPU the denoiser barely follows s, so an edit decodes to nearly
the unedited image. The nudges draw what raises s_J where the prototype fires, and the remaining
denoising steps keep it plausible. A guided edit therefore shows the prototype layer's pattern as
the denoiser renders it, not what the denoiser alone associates with s_J; reports say which edits
were guided, and their edit fidelity measures the guidance as much as the model.

Each nudge, per edited image with prototype J and target value v:

    g   = d relu(v - s_J(smooth(clip(x0)))) / d x0          (zero once s_J reaches v)
    x0' = x0 - step_size * g / |g|
    x'  = x + sqrt(abar_next) * (x0' - x0)                   (the DDIM sample's clean component)

where x0 is the step's predicted clean image, x the sample it hands on and abar_next the noise
level of that sample (1 after the last step). ``smoothing`` passes of a 3x3 binomial blur before the
prototype layer keep the gradient from raising s_J with pixel-level texture that a slightly
blurred copy of the image would no longer show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from patronus.diffusion.samplers import AfterStep, SamplerStep
from patronus.diffusion.timesteps import respaced_timesteps
from patronus.models import Patronus
from patronus.utils.images import smooth


@dataclass(frozen=True)
class PrototypeGuidance:
    """How edits are nudged towards their prototype's target activation (see the module)."""

    step_size: float = 0.5  # L2 norm of each nudge of the predicted clean image ([-1, 1] pixels)
    smoothing: int = 1  # 3x3 binomial blurs of the predicted clean image before the prototypes
    late_fraction: float = 0.5  # nudge only at timesteps t <= late_fraction * (T - 1)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be finite and > 0, got {self.step_size}")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int):
            raise TypeError(f"smoothing must be an int, got {type(self.smoothing).__name__}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")
        if not 0.0 < self.late_fraction <= 1.0:
            raise ValueError(f"late_fraction must be in (0, 1], got {self.late_fraction}")

    def settings(self) -> dict[str, float | int]:
        """The settings as plain numbers (for results files and reports)."""
        return {
            "step_size": self.step_size,
            "smoothing": self.smoothing,
            "late_fraction": self.late_fraction,
        }


def _next_levels(timesteps: int, steps: int) -> dict[int, int]:
    """Each respaced DDIM level -> the level its step decodes to (-1: the clean data)."""
    descending = respaced_timesteps(timesteps, steps)[::-1]
    return dict(zip(descending, [*descending[1:], -1], strict=True))


def prototype_guidance_hook(
    model: Patronus,
    guidance: PrototypeGuidance,
    steps: int,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
) -> AfterStep:
    """The :data:`~patronus.diffusion.samplers.AfterStep` that guides a DDIM decode over ``steps``
    respaced steps of B edits: image b towards s_{prototypes[b]} = targets[b] (both (B,))."""
    if prototypes.ndim != 1 or targets.shape != prototypes.shape:
        raise ValueError(
            f"prototypes and targets must both be (B,), got {tuple(prototypes.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("targets must be finite")
    schedule = model.schedule
    next_level = _next_levels(schedule.timesteps, steps)
    last_guided = guidance.late_fraction * (schedule.timesteps - 1)
    rows = torch.arange(len(prototypes))

    def nudge(step: SamplerStep) -> torch.Tensor:
        if step.t > last_guided:
            return step.sample
        if step.sample.shape[0] != len(prototypes):
            raise ValueError(f"{step.sample.shape[0]} samples, {len(prototypes)} targets")
        if step.t not in next_level:
            raise ValueError(f"timestep {step.t} is not a level of a {steps}-step DDIM decode")
        with torch.enable_grad():
            x0 = step.pred_x0.detach().clamp(-1, 1).requires_grad_(True)
            activations = model.encode(smooth(x0, guidance.smoothing))
            reached = activations[rows.to(x0.device), prototypes.to(x0.device)]
            shortfall = (targets.to(reached) - reached).relu()
            (gradient,) = torch.autograd.grad(shortfall.sum(), x0)
        norm = gradient.flatten(1).norm(dim=1).clamp_min(torch.finfo(gradient.dtype).tiny)
        direction = gradient / norm.view(-1, 1, 1, 1)
        abar_next = schedule.abar(next_level[step.t])
        return step.sample - math.sqrt(abar_next) * guidance.step_size * direction.to(step.sample)

    return nudge
