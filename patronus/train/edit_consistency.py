"""Edit consistency: a training term that makes the denoiser follow an edited activation.

The noise-prediction loss only ever shows the denoiser activations that agree with the noisy
image, so nothing teaches it what to do when they disagree, which is exactly what an edit asks
(invert an image, raise one activation, decode). At the scale a CPU trains, the denoiser then
learns to read the image from x_t and to ignore s.

This term shows it the disagreement and says what it should do: for the training rows at noise
levels t <= ``max_timestep`` (where the predicted clean image is sharp enough to encode), raise one
random prototype J's activation to the batch's largest s_J, predict the noise again, and ask that
the predicted clean image, re-encoded, reaches that value; and that the prediction with the
image's own activations, re-encoded, keeps the image's s_J::

    edited = s_J(x0_hat(x_t, t, s with s_J raised to the target))
    own = s_J(x0_hat(x_t, t, s))
    spilled = mean |change| outside J's box / (mean |change| inside it + 0.05)
    loss = mean(((edited - target) / std_J)^2 + ((own - s_J) / std_J)^2 + spilled^2)

with std_J the batch's spread of s_J, "change" the pixel difference of the two predictions and
J's box the receptive field of the patch where J fires in the edited one. The third part keeps the
edit where the prototype is: without it (measured after 600 fine-tuning steps) edits reached
their request (median fidelity 0.98) by changing the pixels outside the box almost as much as
inside (mean |change| 0.45 against 0.50). The second part keeps the comparison honest:
if the term compared the two predictions instead, the cheapest way to a large difference would be
to lower what the unedited one encodes to (measured: edits then decoded to images with a lower s_J
than the original's, median fidelity -0.29). The re-encoding uses the encoder and prototypes as
they are (their weights get no gradient from this term, so they cannot make edits easy by changing
what an activation means); the gradient goes to the denoiser alone. The idea is the consistency
feedback of ControlNet++ (Li et al., 2024), with the model's own prototype block as the reward
model.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from patronus.diffusion.parametrization import predicted_x0
from patronus.models.patronus import Patronus, TrainingForward
from patronus.nn.proto_encoder import box_masks
from patronus.nn.prototype_layer import PrototypeOutput

VISIBLE_CHANGE = 0.05  # a mean |pixel change| (images in [-1, 1]) a person starts to see


def frozen_prototype_output(model: Patronus, images: torch.Tensor) -> PrototypeOutput:
    """The prototype output of images (B, C, H, W), differentiable in the images but not in the
    encoder's or the prototypes' weights."""
    encoder = {name: p.detach() for name, p in model.encoder.named_parameters()}
    features = functional_call(model.encoder, encoder, (images,))
    prototypes = {name: p.detach() for name, p in model.prototype_layer.named_parameters()}
    return functional_call(model.prototype_layer, prototypes, (features,))


def edit_consistency_loss(
    model: Patronus,
    t: torch.Tensor,
    forward: TrainingForward,
    max_timestep: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The edit-consistency term of one training batch (see the module's docstring).

    t: (B,) the batch's timesteps; forward: what the noise-prediction pass computed for them. Rows
    whose activations were dropped (condition dropout) or whose t exceeds ``max_timestep`` take no
    part; without any such row the term is 0 (still attached to the graph).
    """
    s = forward.activations.detach()
    rows = torch.nonzero(forward.kept & (t <= max_timestep)).flatten()
    if rows.numel() == 0:
        return forward.eps.sum() * 0.0
    prototype = torch.randint(0, s.shape[1], (rows.numel(),), device=s.device, generator=generator)
    target = s.max(dim=0).values[prototype]
    spread = s.std(dim=0).clamp_min(1e-6)[prototype]
    count = torch.arange(rows.numel(), device=s.device)
    edited = s[rows].clone()
    edited[count, prototype] = target
    x_t, t_rows = forward.x_t[rows], t[rows]
    abar = model.alphas_cumprod(x_t.device)[t_rows].to(x_t.dtype).reshape(-1, 1, 1, 1)
    eps_edit = model(x_t, t_rows, edited)
    x0_edit = predicted_x0(x_t, eps_edit.to(x_t.dtype), abar, "epsilon")
    x0_own = predicted_x0(x_t, forward.eps[rows].to(x_t.dtype), abar, "epsilon")
    output = frozen_prototype_output(model, torch.cat([x0_edit, x0_own]))
    after, own = output.activations.gather(1, prototype.repeat(2)[:, None]).squeeze(1).chunk(2)
    missed = (after - target) / spread
    drifted = (own - s[rows, prototype]) / spread
    cells = output.patch_index[: rows.numel()].gather(1, prototype[:, None])[:, 0]
    size = model.config.image_size
    where = box_masks(model.patch_boxes(cells), size, size)[:, None].to(x_t.dtype)
    change = (x0_edit - x0_own).abs().mean(1, keepdim=True)
    inside = (change * where).sum((1, 2, 3)) / where.sum((1, 2, 3)).clamp_min(1)
    outside = (change * (1 - where)).sum((1, 2, 3)) / (1 - where).sum((1, 2, 3)).clamp_min(1)
    spilled = outside / (inside + VISIBLE_CHANGE)
    return (missed.square() + drifted.square() + spilled.square()).mean()
