"""Confirming a flagged shortcut by intervention, with a power check and a null baseline.

For a flagged suspect (the target's top prototypes encode attribute a), every image's top
prototypes are moved to the other target group's typical strong values (the 95% quantile on the
side away from the image's own group: target-negative images get what target-positive images
show strongly, and back); each image is inverted with its own activations and decoded with the
edited ones; an attribute classifier reads the unedited and the edited decodes.

- **Power**: the edit must take. The edited images are re-encoded and the change of the edited
  activations is divided by the change asked for (the median over images and prototypes is
  ``realised``; 1: delivered, 0: nothing). Below ``min_realised`` (0.5, half of the request) the
  intervention is underpowered and gives no verdict (``confirmed=None``): a classifier that does
  not move says nothing about a model whose edits do not show.
- **Null baseline**: the same edit of ``null_sets`` random sets of as many other prototypes.
- **Verdict**: confirmed when powered, the classifier's probability of a moves by at least
  ``min_effect`` (0.1) on average, and by more than under every null set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from patronus.eval.classifier import SmallClassifier
from patronus.eval.diagnosis import Diagnosis, Intervention
from patronus.interpret.what import Inversion, invert_images
from patronus.models import Patronus

MIN_REALISED = 0.5


def edited_towards_other_group(
    activations: torch.Tensor, target_labels: torch.Tensor, prototypes: Sequence[int]
) -> torch.Tensor:
    """(n, P) activations, (n,) binary target labels -> (n, P) with ``prototypes`` of every image
    set to the other target group's typical strong value (95% quantile away from its own group)."""
    index = torch.tensor(list(prototypes), dtype=torch.long)
    positive_group = target_labels.bool()
    if positive_group.all() or not positive_group.any():
        raise ValueError("the intervention needs images of both target groups")
    positive = activations[positive_group][:, index]
    negative = activations[~positive_group][:, index]
    upward = positive.mean(0) > negative.mean(0)

    def typical(group: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return torch.where(high, group.quantile(0.95, dim=0), group.quantile(0.05, dim=0))

    edited = activations.clone()
    rows = positive_group.nonzero()[:, 0][:, None]
    edited[rows, index] = typical(negative, ~upward).to(edited)
    rows = (~positive_group).nonzero()[:, 0][:, None]
    edited[rows, index] = typical(positive, upward).to(edited)
    return edited


@torch.no_grad()
def _decode_and_read(
    model: Patronus, inversion: Inversion, activations: torch.Tensor, classifier: SmallClassifier
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode from the images' own x_T -> (classifier probabilities (n, A), re-encoded s (n, P))."""
    decoded = inversion.decode(model, activations)
    return classifier.probabilities(decoded), model.encode(decoded)


def realised_fraction(
    own: torch.Tensor, edited: torch.Tensor, achieved: torch.Tensor, prototypes: Sequence[int]
) -> float:
    """Median over images and ``prototypes`` of (achieved - own) / (edited - own), (n, P) each;
    entries that asked for no change are left out (NaN if none asked)."""
    index = list(prototypes)
    requested = (edited - own)[:, index]
    delivered = (achieved - own)[:, index]
    asked = requested.abs() > 1e-6 * own[:, index].abs().clamp_min(1.0)
    if not asked.any():
        return float("nan")
    return float((delivered[asked] / requested[asked]).median())


@torch.no_grad()
def intervene(
    model: Patronus,
    images: torch.Tensor,
    target_labels: torch.Tensor,
    prototypes: Sequence[int],
    classifier: SmallClassifier,
    target_index: int,
    other_index: int,
    steps: int = 50,
    null_sets: int = 3,
    min_effect: float = 0.1,
    min_realised: float = MIN_REALISED,
    seed: int = 0,
    guidance_scale: float | None = None,
) -> Intervention:
    """Edit ``prototypes`` of ``images`` (n, C, H, W; on any device, decoded on the model's)
    towards the other target group, with the power check and the null baseline (see the module
    docstring). ``target_index`` and ``other_index`` are the classifier's outputs for the target
    and for the other attribute."""
    if not prototypes:
        raise ValueError("the intervention needs at least one prototype")
    inversion = invert_images(model, images.to(model.device), steps, guidance_scale)
    own = inversion.activations
    before, _ = _decode_and_read(model, inversion, own, classifier)

    def effect(chosen: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        edited = edited_towards_other_group(own, target_labels, chosen)
        after, reencoded = _decode_and_read(model, inversion, edited, classifier)
        return (after - before).abs().mean(0), edited, reencoded

    change, edited, reencoded = effect(prototypes)
    realised = realised_fraction(own, edited, reencoded, prototypes)
    others = [j for j in range(model.num_prototypes) if j not in set(prototypes)]
    generator = torch.Generator().manual_seed(seed)
    null_effects = []
    for _ in range(null_sets if len(others) >= len(prototypes) else 0):
        pick = torch.randperm(len(others), generator=generator)[: len(prototypes)]
        null_change, _, _ = effect([others[i] for i in pick.tolist()])
        null_effects.append(float(null_change[other_index]))
    other_effect = float(change[other_index])
    return Intervention(
        list(prototypes),
        realised,
        other_effect,
        float(change[target_index]),
        null_effects,
        verdict_of(realised, other_effect, null_effects, min_effect, min_realised),
    )


def verdict_of(
    realised: float,
    other_effect: float,
    null_effects: Sequence[float],
    min_effect: float = 0.1,
    min_realised: float = MIN_REALISED,
) -> bool | None:
    """None when underpowered (realised below ``min_realised``, or NaN); else whether the effect
    reaches ``min_effect`` and beats every null effect."""
    if not realised >= min_realised:
        return None
    return other_effect >= min_effect and all(other_effect > null for null in null_effects)


def confirm(
    diagnosis: Diagnosis,
    model: Patronus,
    images: torch.Tensor,
    labels: torch.Tensor,
    classifier: SmallClassifier,
    steps: int = 50,
    min_effect: float = 0.1,
    min_realised: float = MIN_REALISED,
    null_sets: int = 3,
    seed: int = 0,
    guidance_scale: float | None = None,
) -> Diagnosis:
    """Intervene for every flagged suspect: images (n, C, H, W) with their binary labels (n, A)
    in the diagnosis' attribute order, a classifier with one output per attribute. Returns the
    diagnosis with each flagged suspect's :class:`Intervention`."""
    t = diagnosis.attributes.index(diagnosis.target)
    suspects = []
    for suspect in diagnosis.suspects:
        if suspect.flagged:
            result = intervene(
                model,
                images,
                labels[:, t],
                diagnosis.top_prototypes,
                classifier,
                t,
                diagnosis.attributes.index(suspect.attribute),
                steps,
                null_sets,
                min_effect,
                min_realised,
                seed,
                guidance_scale,
            )
            suspect = replace(suspect, intervention=result)
        suspects.append(suspect)
    thresholds = {
        **diagnosis.thresholds,
        "min_effect": min_effect,
        "min_realised": min_realised,
        "null_sets": null_sets,
    }
    return replace(diagnosis, suspects=suspects, thresholds=thresholds)
