"""Edits confined to the region where the prototype fires (blended decoding).

A plain edit decodes the edited activations from the image's x_T and lets the whole image
change. Decoded in a region, the latents outside a soft mask are replaced after every DDIM step by
the unedited decode's latents at the same step (the known-region blending of Blended Diffusion and
RePaint), so the image changes only inside the mask, and the denoiser, which sees the whole image
at every step, draws the inside to fit the unchanged outside. The mask is the receptive-field box
of prototype J's winning patch in the original image, widened by a margin, with a soft edge.

What it shows: what the model draws in J's region when asked to raise s_J, everything else kept.
The inside/outside change ratio of such edits is high by construction (it says where the edit was
allowed, not where the model would have put it); edit fidelity (does the re-encoded s_J reach the
request?) still measures the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from patronus.diffusion.samplers import AfterStep, SamplerStep, run_sampler
from patronus.models import Patronus
from patronus.nn.proto_encoder import box_masks
from patronus.utils.images import smooth

if TYPE_CHECKING:
    from patronus.interpret.what import Inversion

REGION_MARGIN = 2  # pixels added around the receptive-field box on every side


def region_masks(boxes: torch.Tensor, size: int, margin: int = REGION_MARGIN) -> torch.Tensor:
    """Pixel boxes (N, 4) (top, left, bottom, right, half-open) -> soft masks (N, 1, size, size)
    float32 in [0, 1]: 1 inside the box widened by ``margin``, 0 well outside, a one-pixel
    binomial edge between."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    widened = boxes + torch.tensor([-margin, -margin, margin, margin], device=boxes.device)
    return smooth(box_masks(widened, size, size).float()[:, None], 1)


@torch.no_grad()
def unedited_latents(model: Patronus, inversion: Inversion) -> list[torch.Tensor]:
    """The unedited decode of the inversion's n images after every DDIM step, (n, C, H, W) each;
    the last is the reconstruction (what :meth:`Inversion.decode` returns for its activations)."""
    return [step.sample for step in inversion.decode_steps(model, inversion.activations)]


@torch.no_grad()
def decode_in_region(
    model: Patronus,
    inversion: Inversion,
    s: torch.Tensor,
    masks: torch.Tensor,
    edit_guidance: float = 1.0,
    unedited: Sequence[torch.Tensor] | None = None,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    """Decode edits s (k * n, P) of the inversion's n images (tiled as
    :func:`~patronus.interpret.what.edited_activations` tiles them) from their x_T, keeping the
    unedited decode outside ``masks`` (k * n, 1, H, W) (1: the edit decides, 0: the unedited decode
    does) after every step. Same sampler settings as :meth:`Inversion.decode`, so masks of ones give
    the plain edits and masks of zeros the reconstructions. ``unedited``: the
    :func:`unedited_latents` of the inversion, when the caller has them already (decoding several
    chunks of edits). ``after_step`` (e.g. :mod:`patronus.interpret.prototype_guidance`) changes
    each step's sample before the blend. Returns (k * n, C, H, W)."""
    n = inversion.images.shape[0]
    repeats, leftover = divmod(s.shape[0], n)
    if leftover or repeats == 0:
        raise ValueError(f"{s.shape[0]} activations are not edits of the {n} images")
    size = inversion.x_T.shape[-1]
    if masks.shape != (s.shape[0], 1, size, size):
        raise ValueError(
            f"masks must be ({s.shape[0]}, 1, {size}, {size}), got {tuple(masks.shape)}"
        )
    if not bool(((masks >= 0) & (masks <= 1)).all()):
        raise ValueError("mask values must lie in [0, 1]")
    masks = masks.to(inversion.x_T)
    if unedited is None:
        unedited = unedited_latents(model, inversion)
    if len(unedited) != inversion.steps:
        raise ValueError(f"unedited must hold {inversion.steps} steps, got {len(unedited)}")

    def keep_outside(step: SamplerStep) -> torch.Tensor:
        sample = step.sample if after_step is None else after_step(step)
        return torch.lerp(unedited[step.index].repeat(repeats, 1, 1, 1), sample, masks)

    x_T = inversion.x_T.repeat(repeats, 1, 1, 1)
    trajectory = inversion.decode_steps(model, s, x_T, edit_guidance, after_step=keep_outside)
    return run_sampler(trajectory)
