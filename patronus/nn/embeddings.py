"""Time and prototype embeddings of the Patronus denoiser."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(num_steps: int, dim: int) -> torch.Tensor:
    """Fixed table (num_steps, dim): half sin, half cos of t * exp(-k ln(10000) / (dim/2 - 1)).

    Computed in float32 with the original implementation's operations, so that its checkpoints'
    stored tables match bit for bit.
    """
    if dim < 4 or dim % 2:
        raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    frequencies = torch.exp(
        torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1))
    )
    angles = torch.arange(num_steps, dtype=torch.float32)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """Integer timestep t (B,) -> (B, out_dim): sinusoidal table, Linear, SiLU, Linear."""

    table: torch.Tensor  # (num_steps, dim), a buffer

    def __init__(self, num_steps: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(num_steps, dim), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.table[t])


class PrototypeEmbedding(nn.Module):
    """Prototype activations s (B, P) -> (B, out_dim): Linear, SiLU, Linear."""

    def __init__(self, num_prototypes: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_prototypes, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.mlp(s)


class PrototypeTokens(nn.Module):
    """Prototype activations s (B, P) -> one token per prototype (B, P, out_dim).

    Token J = Linear(SiLU(s_J w + b + identity_J)): one small MLP of the scalar s_J shared by
    all prototypes, told apart by a learned identity vector per prototype, so that a change of s_J
    changes token J only.
    """

    def __init__(self, num_prototypes: int, out_dim: int) -> None:
        super().__init__()
        self.value = nn.Linear(1, out_dim)
        self.identity = nn.Parameter(torch.randn(num_prototypes, out_dim) * out_dim**-0.5)
        self.out = nn.Linear(out_dim, out_dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.silu(self.value(s[..., None]) + self.identity))
