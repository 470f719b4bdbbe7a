"""The prototype layer: distances of feature patches to learned prototypes, pooled by min."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from patronus.ops import prototype_distance_map, prototype_min_distance

ACTIVATIONS = ("log", "linear")


class PrototypeOutput(NamedTuple):
    """Output of :class:`PrototypeLayer` for a batch of B feature maps and P prototypes."""

    activations: torch.Tensor  # (B, P) float32: the conditioning vector s
    min_distances: torch.Tensor  # (B, P) float32: min squared L2 distance over patches
    patch_index: torch.Tensor  # (B, P) int64: flat index of the winning patch into H*W


def distance_to_activation(
    distances: torch.Tensor, activation: str = "log", eps: float = 1e-4
) -> torch.Tensor:
    """Similarity from squared distance: log((d + 1) / (d + eps)), or -d for "linear"."""
    if activation == "log":
        return torch.log((distances + 1.0) / (distances + eps))
    if activation == "linear":
        return -distances
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


class PrototypeLayer(nn.Module):
    """P learned prototypes of dimension D, each matched to its nearest feature patch.

    Args:
        num_prototypes: P.
        dim: D, the channel count of the features.
        activation: "log" (log((d + 1) / (d + eps)), bounded by log(1/eps)) or "linear" (-d).
        eps: the log activation's epsilon.
        check_finite: raise on NaN/Inf features (costs a host sync; off by default).

    Prototypes are initialised U[0, 1) as in the paper.
    """

    def __init__(
        self,
        num_prototypes: int,
        dim: int,
        activation: str = "log",
        eps: float = 1e-4,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        if num_prototypes < 1 or dim < 1:
            raise ValueError(f"need num_prototypes >= 1 and dim >= 1, got {num_prototypes}, {dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not eps > 0:  # also refuses NaN
            raise ValueError(f"eps must be > 0 (the log activation divides by d + eps), got {eps}")
        self.activation = activation
        self.eps = eps
        self.check_finite = check_finite
        self.prototypes = nn.Parameter(torch.rand(num_prototypes, dim))

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def _check(self, features: torch.Tensor) -> None:
        if self.check_finite and not torch.isfinite(features).all():
            raise ValueError("PrototypeLayer got NaN or Inf features")

    def forward(self, features: torch.Tensor) -> PrototypeOutput:
        """features (B, D, H, W) or (B, N, D) -> PrototypeOutput of (B, P) tensors."""
        self._check(features)
        min_distances, patch_index = prototype_min_distance(features, self.prototypes)
        activations = distance_to_activation(min_distances, self.activation, self.eps)
        return PrototypeOutput(activations, min_distances, patch_index)

    def distance_map(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D, H, W) -> squared distances (B, P, H, W)."""
        self._check(features)
        return prototype_distance_map(features, self.prototypes)

    def extra_repr(self) -> str:
        num, dim = self.prototypes.shape
        return f"num_prototypes={num}, dim={dim}, activation={self.activation!r}, eps={self.eps}"


def prototype_distinct_loss(prototypes: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Hinge on how close each prototype is to its nearest other prototype (in 1 - |cos|).

    prototypes (P, D) -> scalar: mean over prototypes of relu(margin - min_{k != j} (1 - |cos_jk|)).
    Zero for a single prototype.
    """
    if prototypes.shape[0] < 2:
        return prototypes.sum() * 0.0
    unit = nn.functional.normalize(prototypes.float(), dim=1)
    distance = 1.0 - (unit @ unit.t()).abs()
    eye = torch.eye(prototypes.shape[0], dtype=torch.bool, device=prototypes.device)
    nearest = distance.masked_fill(eye, float("inf")).min(dim=1).values
    return torch.relu(margin - nearest).mean()
