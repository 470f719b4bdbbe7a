"""Test helpers shipped with the package: the tolerance table and float64 brute-force oracles."""

from __future__ import annotations

import torch

# Absolute / relative tolerances per input dtype for results accumulated in float32.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-4, "rtol": 1e-5},
    torch.float16: {"atol": 1e-3, "rtol": 1e-3},
    torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2},
}


# The scheduler step against float64 equations: max |error| / (1 + |expected|) per dtype.
STEP_TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return TOLERANCES[dtype]


def brute_force_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """float64 oracle: features (B, D, H, W) or (B, N, D), prototypes (P, D) -> (B, P, N),
    sum((z - p)^2) computed directly (no norm expansion)."""
    patches = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features
    z = patches.double()[:, None, :, :]  # (B, 1, N, D)
    p = prototypes.double()[None, :, None, :]  # (1, P, 1, D)
    return (z - p).square().sum(-1)
