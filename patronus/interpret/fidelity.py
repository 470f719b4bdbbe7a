"""Edit fidelity: does an edited image deliver the activation change it was asked for, and does it
change where the prototype fires?

For every (prototype J, image i) edit of a :class:`~patronus.interpret.what.PrototypeVisualization`:

- requested = the value s_J was set to - the image's own s_J; achieved = s_J re-encoded from the
  decoded edit - the image's own s_J; fidelity = achieved / requested (1: the edit delivered
  exactly what was asked; 0: nothing; negative: the opposite), reported raw and clipped to [-1, 2].
  Edits that asked for no rise (the image's s_J already at or above the value) have no fidelity.
- the mean absolute pixel change |edit - unedited decode| inside J's box in the edit (the patch it
  fires on) and outside it: an edit a person can see where the prototype is has inside >> outside.

The headline numbers a user reads first: the median fidelity, the share of edits that reach half
of their request, and the ratio of the mean change inside the boxes to the mean change outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from patronus.interpret.what import PrototypeVisualization
from patronus.nn.proto_encoder import box_masks

FIDELITY_RANGE = (-1.0, 2.0)
HALF = 0.5


@dataclass(frozen=True)
class EditFidelity:
    """Per-edit measurements, (J, n) each, J prototypes edited into n images."""

    prototypes: list[int]
    requested: torch.Tensor  # the activation change asked for
    achieved: torch.Tensor  # the change the re-encoded edit shows
    inside: torch.Tensor  # mean |pixel change| inside J's box in the edit
    outside: torch.Tensor  # mean |pixel change| outside it (NaN if the box is the whole image)
    confined: bool = False  # edits decoded confined to a box: inside/outside by construction
    prototype_guided: bool = False  # edits nudged by s_J's gradient (interpret.prototype_guidance)
    reconstruction_mse: torch.Tensor | None = None  # (n,) unedited decode vs image; None: unknown

    @property
    def raw(self) -> torch.Tensor:
        """achieved / requested; NaN where no rise was requested."""
        return torch.where(self.requested > 0, self.achieved / self.requested, math.nan)

    @property
    def fidelity(self) -> torch.Tensor:
        """:attr:`raw` clipped to [-1, 2] (NaN stays NaN)."""
        return self.raw.clamp(*FIDELITY_RANGE)

    def per_prototype(self) -> torch.Tensor:
        """(J,) the median fidelity of each prototype's edits (NaN without a request)."""
        return self.fidelity.nanmedian(dim=1).values

    def summary(self) -> dict[str, float | int]:
        """The headline numbers: median fidelity, share of edits reaching half their request, the
        inside/outside change ratio, how many edits they count, and the median reconstruction
        MSE of the images they were decoded from (NaN when unknown)."""
        fidelity = self.fidelity[self.requested > 0]
        outside = self.outside[~self.outside.isnan()]
        inside = self.inside[~self.outside.isnan()]
        ratio = float(inside.mean() / outside.mean()) if outside.numel() else math.nan
        return {
            "median_fidelity": float(fidelity.median()) if fidelity.numel() else math.nan,
            "share_reaching_half": float((fidelity >= HALF).float().mean())
            if fidelity.numel()
            else math.nan,
            "inside_outside_ratio": ratio,
            "mean_change_inside": float(inside.mean()) if inside.numel() else math.nan,
            "mean_change_outside": float(outside.mean()) if outside.numel() else math.nan,
            "edits": int(self.requested.numel()),
            "edits_with_a_request": int(fidelity.numel()),
            "confined_to_box": self.confined,
            "prototype_guided": self.prototype_guided,
            "reconstruction_mse": math.nan
            if self.reconstruction_mse is None
            else float(self.reconstruction_mse.median()),
        }


def _inside_outside(change: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """change (N, H, W), half-open boxes (N, 4) -> mean change inside and outside each box."""
    mask = box_masks(boxes, *change.shape[-2:])
    change = change.cpu().double()
    count_in = mask.sum((1, 2))
    count_out = mask.numel() // mask.shape[0] - count_in
    total_in = (change * mask).sum((1, 2))
    total_out = change.sum((1, 2)) - total_in
    inside = total_in / count_in.clamp_min(1)
    outside = torch.where(count_out > 0, total_out / count_out.clamp_min(1), math.nan)
    return inside.float(), outside.float()


def edit_fidelity(vis: PrototypeVisualization) -> EditFidelity:
    """The fidelity of every edit of ``vis`` (see the module's docstring)."""
    count, n = vis.before.shape
    requested = vis.bounds.to(vis.before).reshape(-1, 1) - vis.before
    unedited = vis.reconstructions.to(vis.edits.device)
    change = (vis.edits - unedited.unsqueeze(0)).abs().mean(2)  # (J, n, H, W)
    inside, outside = _inside_outside(change.flatten(0, 1), vis.boxes.reshape(-1, 4).cpu())
    return EditFidelity(
        prototypes=list(vis.prototypes),
        requested=requested.cpu().float(),
        achieved=vis.achieved.cpu().float(),
        inside=inside.reshape(count, n),
        outside=outside.reshape(count, n),
        confined=vis.region,
        prototype_guided=vis.prototype_guidance is not None,
        reconstruction_mse=vis.reconstruction_mse().cpu().float(),
    )
