"""When: the denoising step at which a prototype emerges in a decoded edit.

While decoding an edit (prototype J's activation raised) and the unedited reference from the same
x_T, the predicted clean image x0_hat(t) of every step is encoded and every prototype's activation
recorded. Prototype J's emergence curve is the gap g(t) = s_J(edit x0_hat(t)) - s_J(reference
x0_hat(t)). Definition: J emerges in an image when its final gap reaches ``min_share`` (default
10%) of the requested change (the edit's target value minus the reference's final s_J); the
emergence step is the first step from which the gap stays at or above ``fraction`` (default 1/2)
of its final value until the end. Edits and references of all images and prototypes are decoded in
one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from patronus.interpret.what import Inversion, checked_indices, edited_activations, per_image_mse
from patronus.models import Patronus


@dataclass(frozen=True)
class Emergence:
    """Curves over S steps for J prototypes in n images."""

    prototypes: list[int]
    timesteps: torch.Tensor  # (S,) the step's diffusion timestep, descending
    edit: torch.Tensor  # (S, J, n) s_J of the edit's x0_hat
    reference: torch.Tensor  # (S, J, n) s_J of the unedited decode's x0_hat
    emergence_step: torch.Tensor  # (J, n) int64 index into timesteps, -1: did not emerge
    emergence_t: torch.Tensor  # (J, n) int64 timestep, -1: did not emerge
    requested: torch.Tensor  # (J, n) the edit's value minus the reference's final s_J
    min_share: float  # J emerges only where its final gap reaches this share of ``requested``
    reconstruction_mse: torch.Tensor | None = None  # (n,) the unedited decode against each image

    @property
    def gap(self) -> torch.Tensor:
        return self.edit - self.reference

    def never_emerging(self) -> list[int]:
        """The prototypes that emerge in none of the images."""
        never = (self.emergence_t < 0).all(1).tolist()
        return [p for p, flag in zip(self.prototypes, never, strict=True) if flag]

    @property
    def share(self) -> torch.Tensor:
        """(S, J, n) the gap as a share of the requested change (NaN where none was requested:
        the image's s_J was at or above the value already)."""
        requested = torch.where(self.requested > 0, self.requested, torch.nan)
        return self.gap / requested


def emergence_steps(
    gap: torch.Tensor, fraction: float = 0.5, min_gain: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """gap (S, ...) -> (...) first step index from which gap >= fraction * final gap up to the
    end; -1 where the final gap is at most ``min_gain`` (a number or a (...) tensor)."""
    final = gap[-1]
    above = gap >= fraction * final
    # stays above from step k on: reverse cumulative AND
    holds = above.flip(0).int().cumprod(0).flip(0).bool()
    first = torch.where(holds.any(0), holds.int().argmax(0), torch.full_like(final, -1).long())
    return torch.where(final > min_gain, first, torch.full_like(first, -1))


@torch.no_grad()
def trace_emergence(
    model: Patronus,
    inversion: Inversion,
    prototypes: Sequence[int],
    values: torch.Tensor,
    fraction: float = 0.5,
    min_share: float = 0.1,
    edit_guidance: float = 1.0,
) -> Emergence:
    """Decode each prototype's edit (s_J := values, (J,) or (J, n)) and the reference together,
    tracing every prototype's activation of x0_hat at every step (``edit_guidance``: see
    :meth:`Inversion.decode`)."""
    for name, share in (("fraction", fraction), ("min_share", min_share)):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {share}")
    prototypes = checked_indices("prototypes", prototypes, model.num_prototypes, distinct=True)
    n = inversion.images.shape[0]
    edits = edited_activations(inversion.activations, prototypes, values)
    s = torch.cat([inversion.activations, edits])
    x_T = inversion.x_T.repeat(len(prototypes) + 1, 1, 1, 1)
    traced, timesteps = [], []
    was_training = model.training
    model.eval()
    try:
        for step in inversion.decode_steps(model, s, x_T, edit_guidance):
            traced.append(model.encode(step.pred_x0))
            timesteps.append(step.t)
            decoded = step.pred_x0[:n]  # after the last step: the unedited decode
    finally:
        model.train(was_training)
    activations = torch.stack(traced)  # (S, (J + 1) n, P)
    index = torch.tensor(prototypes, device=activations.device)
    reference = activations[:, :n, :][:, :, index].permute(0, 2, 1)  # (S, J, n)
    edits = activations[:, n:, :].reshape(len(timesteps), len(prototypes), n, -1)
    edit = torch.stack([edits[:, j, :, p] for j, p in enumerate(prototypes)], dim=1)  # (S, J, n)
    requested = values.to(edit).reshape(len(prototypes), -1) - reference[-1]  # (J, n)
    steps = emergence_steps(edit - reference, fraction, (min_share * requested).clamp_min(0))
    timestep_table = torch.tensor(timesteps)
    steps = steps.cpu()
    emergence_t = torch.where(steps >= 0, timestep_table[steps.clamp_min(0)], -1)
    return Emergence(
        prototypes, timestep_table, edit.cpu(), reference.cpu(), steps, emergence_t,
        requested.cpu(), min_share, per_image_mse(decoded, inversion.images).cpu(),
    )  # fmt: skip
