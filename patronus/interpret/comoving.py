"""Co-moving edits: raise one prototype's activation and move the others with it as the
reference images do.

A plain edit raises s_J and keeps every other activation. In a small model the activations are
tied to each other (and to the garment's class), so that request is one no training image makes,
and the denoiser delivers little of it. Moving the other activations along, by their least-squares
regression on s_J over the reference images, asks for a plausible vector instead; measured on the
shipped Fashion-MNIST model (docs/edit-fidelity.md), the decoded images then deliver a median 0.53
of the requested rise of s_J, against 0.003 for plain edits, but they change the whole garment
rather than the prototype's patch. Such an edit shows what the model associates with prototype J,
not what J alone encodes; ``shrinkage`` interpolates between the two::

    C = covariance of the reference activations                     (P, P)
    directions[J, K] = C[J, K] / ((1 + shrinkage) C[J, J])  for K != J,   directions[J, J] = 1

Row J is the change of every activation per unit rise of s_J (pass it to
:func:`patronus.interpret.edited_activations` or :func:`patronus.interpret.visualize_prototypes`):
shrinkage 0 is the regression, a large shrinkage the plain edit. A prototype whose reference
activation never varies gets the plain row (the data say nothing about what moves with it).
"""

from __future__ import annotations

import math

import torch


def comoving_directions(reference: torch.Tensor, shrinkage: float = 0.0) -> torch.Tensor:
    """Reference activations (N, P), N >= 2 -> edit directions (P, P) in their dtype (computed in
    float64): row J is how every activation moves per unit rise of s_J (see the module)."""
    if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
        raise TypeError("reference activations must be a floating-point torch.Tensor")
    if reference.dim() != 2 or reference.shape[0] < 2:
        raise ValueError(f"reference activations must be (N >= 2, P), got {tuple(reference.shape)}")
    if not torch.isfinite(reference).all():
        raise ValueError("reference activations contain NaN or Inf")
    if not (math.isfinite(shrinkage) and shrinkage >= 0):
        raise ValueError(f"shrinkage must be finite and >= 0, got {shrinkage}")
    size = reference.shape[1]
    covariance = torch.cov(reference.double().T).reshape(size, size)  # divided by N - 1
    variance = covariance.diagonal()
    varies = variance > 0
    directions = covariance / ((1 + shrinkage) * variance.clamp_min(1e-300))[:, None]
    directions[~varies] = 0.0
    directions.fill_diagonal_(1.0)
    return directions.to(reference.dtype)
