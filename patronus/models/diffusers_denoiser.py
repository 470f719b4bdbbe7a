"""Prototype conditioning for diffusers UNets: a diffusers ``UNet2DModel`` or
``UNet2DConditionModel`` as the denoiser of a :class:`~patronus.Patronus`.

- ``UNet2DModel``: the activations s (B, P) go through a linear layer to the UNet's time-embedding
  width and are added to the time embedding (the UNet is built with ``class_embed_type="identity"``,
  so they enter as its class embedding).
- ``UNet2DConditionModel``: one cross-attention token per prototype, token_j = s_j w_j + b_j with
  learned (P, D) w and b (D: the UNet's ``cross_attention_dim``), so attention can pick prototypes.

A model is described by ``PatronusConfig.diffusers_unet = {"class": ..., "config": {...}}`` (the
UNet's constructor arguments), so checkpoints, training, sampling and every interpretability tool
work on it as on the paper's UNet. diffusers is needed only for such models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from patronus.errors import MissingDependencyError

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


def _diffusers():
    try:
        import diffusers
    except ImportError as error:  # pragma: no cover - exercised without diffusers only
        message = "a diffusers_unet denoiser needs diffusers: pip install diffusers"
        raise MissingDependencyError(message) from error
    return diffusers


class DiffusersDenoiser(nn.Module):
    """``forward(x_t, t, s)``: (B, C, H, W), (B,) int64, (B, P) -> predicted noise (B, C, H, W)."""

    def __init__(
        self, unet_class: str, config: dict[str, Any], num_prototypes: int, image_channels: int
    ) -> None:
        super().__init__()
        if unet_class not in UNET_CLASSES:
            raise ValueError(
                f"diffusers_unet class must be one of {UNET_CLASSES}, got {unet_class!r}"
            )
        diffusers = _diffusers()
        self.conditional = unet_class == "UNet2DConditionModel"
        if self.conditional:
            self.unet = diffusers.UNet2DConditionModel(**config)
            dim = self.unet.config.cross_attention_dim
            self.token_weight = nn.Parameter(torch.randn(num_prototypes, dim) / dim**0.5)
            self.token_bias = nn.Parameter(torch.zeros(num_prototypes, dim))
        else:
            self.unet = diffusers.UNet2DModel(**{**config, "class_embed_type": "identity"})
            width = self.unet.time_embedding.linear_2.out_features
            self.embed = nn.Linear(num_prototypes, width)
        channels = (self.unet.config.in_channels, self.unet.config.out_channels)
        if channels != (image_channels, image_channels):
            raise ValueError(
                f"the UNet's in/out channels {channels} must both be the images' {image_channels}"
            )

    def tokens(self, s: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, P, D) cross-attention tokens, one per prototype."""
        return s[..., None] * self.token_weight + self.token_bias

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.conditional:
            return self.unet(x_t, t, encoder_hidden_states=self.tokens(s.to(x_t.dtype))).sample
        return self.unet(x_t, t, class_labels=self.embed(s.to(x_t.dtype))).sample
