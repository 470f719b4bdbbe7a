"""The paper's analyses: reconstruction, variations, interpolation, extrapolation and consistency.
Each returns tensors; ``patronus.interpret.figures`` draws them.

Everything decoded from an inversion uses the inversion's own settings (:meth:`Inversion.decode`),
so an unedited decode is the reconstruction (DDIM, the solver its inversion mirrors). Variations
start from fresh noise instead and are sampled as samples are (predicted x0 clipped to [-1, 1]),
with any sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from patronus.diffusion.samplers import DEFAULT_SAMPLER, AfterStep
from patronus.interpret.prototype_guidance import PrototypeGuidance, prototype_guidance_hook
from patronus.interpret.what import Inversion, checked_indices, edited_activations, per_image_mse
from patronus.models import Patronus


@torch.no_grad()
def reconstruction(model: Patronus, inversion: Inversion) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image from its own x_T and activations: (reconstructions (n, C, H, W), per-image
    MSE (n,))."""
    decoded = inversion.decode(model, inversion.activations)
    return decoded, per_image_mse(decoded, inversion.images)


@torch.no_grad()
def variations(
    model: Patronus,
    inversion: Inversion,
    count: int = 4,
    generator: torch.Generator | None = None,
    sampler: str = DEFAULT_SAMPLER,
) -> torch.Tensor:
    """The same activations sampled from ``count`` fresh x_T each, with x0 clipped as in sampling,
    ``inversion.steps`` network calls of ``sampler``: (n, count, C, H, W)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    n = inversion.images.shape[0]
    s = inversion.activations.repeat_interleave(count, 0)
    samples = model.sample(s, inversion.steps, generator=generator, clip_x0=True,
                           guidance_scale=inversion.guidance_scale, sampler=sampler)  # fmt: skip
    return samples.reshape(n, count, *samples.shape[1:])


def slerp(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents a, b (C, H, W) at weights (K,) -> (K, C, H, W)."""
    flat_a, flat_b = a.flatten().double(), b.flatten().double()
    cosine = (flat_a @ flat_b) / (flat_a.norm() * flat_b.norm())
    omega = torch.arccos(cosine.clamp(-1, 1))
    w = weight.double()[:, None]
    if omega.abs() < 1e-6:
        mixed = (1 - w) * flat_a + w * flat_b
    else:
        mixed = (torch.sin((1 - w) * omega) * flat_a + torch.sin(w * omega) * flat_b) / torch.sin(
            omega
        )
    return mixed.to(a.dtype).reshape(len(weight), *a.shape)


@torch.no_grad()
def interpolation(
    model: Patronus, inversion: Inversion, first: int = 0, second: int = 1, count: int = 8
) -> torch.Tensor:
    """From image ``first`` to image ``second`` (both included): s linear, x_T spherical ->
    (count, C, H, W)."""
    if count < 2:
        raise ValueError(f"count must be at least 2 (the two images), got {count}")
    first, second = checked_indices("image indices", [first, second], inversion.x_T.shape[0])
    weight = torch.linspace(0, 1, count, device=inversion.x_T.device)
    s_a, s_b = inversion.activations[first], inversion.activations[second]
    s = s_a[None] + weight[:, None] * (s_b - s_a)[None]
    x_T = slerp(inversion.x_T[first], inversion.x_T[second], weight)
    return inversion.decode(model, s, x_T)


@torch.no_grad()
def extrapolation(
    model: Patronus,
    inversion: Inversion,
    prototype: int,
    values: torch.Tensor,
    image: int = 0,
    edit_guidance: float = 1.0,
    prototype_guidance: PrototypeGuidance | None = None,
) -> torch.Tensor:
    """Image ``image`` decoded with s_J set to each of ``values`` (K,) (beyond the observed range
    included), from its own x_T, with ``edit_guidance`` as in :meth:`Inversion.decode` and,
    with ``prototype_guidance``, each decode nudged towards its value (as
    :func:`~patronus.interpret.what.visualize_prototypes` guides) -> (K, C, H, W)."""
    one = inversion.select([image])
    (prototype,) = checked_indices("prototype", [prototype], one.activations.shape[1])
    if values.dim() != 1 or len(values) == 0:
        raise ValueError(f"values must be (K,) with K >= 1, got {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"values must be finite, got {values.tolist()}")
    s = one.activations.repeat(len(values), 1)
    s[:, prototype] = values.to(s)
    x_T = one.x_T.repeat(len(values), 1, 1, 1)
    nudge = _guided(model, prototype_guidance, prototype, values)
    return one.decode(model, s, x_T, edit_guidance, nudge)


def _guided(
    model: Patronus, guidance: PrototypeGuidance | None, prototype: int, targets: torch.Tensor
) -> AfterStep | None:
    """The nudge guiding every decode of prototype J towards its target (B,), or None."""
    if guidance is None:
        return None
    prototypes = torch.full(targets.shape, prototype, dtype=torch.long)
    return prototype_guidance_hook(model, guidance, prototypes, targets)


@dataclass(frozen=True)
class Consistency:
    """One prototype edited into every image: does it land on the same kind of patch?"""

    prototype: int
    edits: torch.Tensor  # (n, C, H, W)
    boxes: torch.Tensor  # (n, 4) the prototype's winning patch in each edit
    activation: torch.Tensor  # (n,) its re-encoded activation


@torch.no_grad()
def consistency(
    model: Patronus,
    inversion: Inversion,
    prototype: int,
    value: float,
    edit_guidance: float = 1.0,
    prototype_guidance: PrototypeGuidance | None = None,
) -> Consistency:
    """Prototype J set to ``value`` in every image, decoded (``edit_guidance`` and
    ``prototype_guidance`` as in :func:`extrapolation`) and re-encoded."""
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    s = edited_activations(inversion.activations, [prototype], torch.tensor([value]))
    targets = torch.full((s.shape[0],), float(value))
    nudge = _guided(model, prototype_guidance, prototype, targets)
    edits = inversion.decode(model, s, edit_guidance=edit_guidance, after_step=nudge)
    output = model.prototype_output(edits)
    boxes = model.patch_boxes(output.patch_index[:, prototype].cpu())
    return Consistency(prototype, edits, boxes, output.activations[:, prototype])
