"""The conditional UNet of Patronus (Weng et al., ICLR 2026, as in the original implementation).

Every residual block adds two per-channel biases: one from the time embedding and one from the
prototype embedding. The bias sits before a GroupNorm, which removes its mean over each group of
channels; ``prototype_conditioning="scale_shift"`` instead scales and shifts the normalised
features (h = GN(h) * (1 + scale) + shift, as in ADM and Diff-AE), a path the norm cannot undo;
``"cross_attention"`` gives each prototype a token and lets every position of every residual
block attend to the tokens (as text-to-image UNets take words), so the denoiser can place what a
prototype asks for where the image suits it.

Module names follow the original implementation where that costs nothing
(``encoder_blocks``, ``bottleneck_blocks``, ``decoder_blocks``), so importing its checkpoints is a
renaming of a few leaf names (``patronus.reference_checkpoint``).
"""

from __future__ import annotations

import torch
from torch import nn

from patronus.models.config import UNetConfig
from patronus.nn.embeddings import PrototypeEmbedding, PrototypeTokens, TimeEmbedding


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class PositionAttention(nn.Module):
    """GroupNorm + multi-head attention of the H*W positions to each other, or to tokens
    (B, P, token_dim) when built with ``token_dim``; residual."""

    def __init__(
        self, channels: int, groups: int, heads: int, token_dim: int | None = None
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attention = nn.MultiheadAttention(
            channels, heads, kdim=token_dim, vdim=token_dim, batch_first=True
        )

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        context = h if tokens is None else tokens
        h, _ = self.attention(h, context, context, need_weights=False)
        return x + h.transpose(1, 2).reshape(batch, channels, height, width)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; + time bias (+ prototype bias); GroupNorm (then the prototype
    scale and shift); SiLU, Dropout2d, conv; + input (1x1 conv where channels change) (then
    cross-attention to the prototype tokens); optional self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float,
        groups: int,
        attention_heads: int,
        self_attention: bool,
        prototype_conditioning: str = "bias",
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.time_bias = nn.Linear(emb_dim, out_channels)
        self.prototype_conditioning = prototype_conditioning
        if prototype_conditioning == "bias":
            self.prototype_bias = nn.Linear(emb_dim, out_channels)
        elif prototype_conditioning == "scale_shift":
            self.prototype_scale_shift = nn.Linear(emb_dim, 2 * out_channels)
        else:
            self.prototype_attention = PositionAttention(
                out_channels, groups, attention_heads, token_dim=emb_dim
            )
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )
        self.attention = (
            PositionAttention(out_channels, groups, attention_heads) if self_attention else None
        )
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, time_emb: torch.Tensor, prototype_emb: torch.Tensor
    ) -> torch.Tensor:
        """prototype_emb: (B, emb_dim), or the tokens (B, P, emb_dim) with cross-attention."""
        h = self.conv1(self.act(self.norm1(x)))
        bias = self.time_bias(self.act(time_emb))
        if self.prototype_conditioning == "bias":
            prototype = self.act(prototype_emb)
            h = self.norm2(h + (bias + self.prototype_bias(prototype))[:, :, None, None])
        elif self.prototype_conditioning == "scale_shift":
            prototype = self.act(prototype_emb)
            scale, shift = self.prototype_scale_shift(prototype)[:, :, None, None].chunk(2, dim=1)
            h = self.norm2(h + bias[:, :, None, None]) * (1 + scale) + shift
        else:
            h = self.norm2(h + bias[:, :, None, None])
        h = self.conv2(self.dropout(self.act(h)))
        h = h + self.skip(x)
        if self.prototype_conditioning == "cross_attention":
            h = self.prototype_attention(h, prototype_emb)
        return self.attention(h) if self.attention is not None else h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class PatronusUNet(nn.Module):
    """eps_theta(x_t, t, s): noise prediction conditioned on the timestep and the activations s.

    Args:
        config: channels, multipliers, attention levels, dropout, ...
        image_channels: C of the images.
        num_prototypes: P, the length of s.
        timesteps: T, rows of the fixed sinusoidal time table.
    """

    def __init__(
        self, config: UNetConfig, image_channels: int, num_prototypes: int, timesteps: int
    ) -> None:
        super().__init__()
        base = config.base_channels
        emb_dim = base * config.time_emb_mult
        groups, heads = config.norm_groups, config.attention_heads

        def block(c_in: int, c_out: int, attend: bool) -> ResBlock:
            return ResBlock(
                c_in,
                c_out,
                emb_dim,
                config.dropout,
                groups,
                heads,
                attend,
                config.prototype_conditioning,
            )

        self.time_embedding = TimeEmbedding(timesteps, base, emb_dim)
        self.prototype_embedding = (
            PrototypeTokens(num_prototypes, emb_dim)
            if config.prototype_conditioning == "cross_attention"
            else PrototypeEmbedding(num_prototypes, emb_dim)
        )
        self.stem = conv3x3(image_channels, base)

        self.encoder_blocks = nn.ModuleList()
        skip_channels = [base]
        channels = base
        levels = len(config.channel_mults)
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.encoder_blocks.append(block(channels, base * mult, config.attention[level]))
                channels = base * mult
                skip_channels.append(channels)
            if level != levels - 1:
                self.encoder_blocks.append(Downsample(channels))
                skip_channels.append(channels)

        self.bottleneck_blocks = nn.ModuleList(
            [
                block(channels, channels, config.bottleneck_attention),
                block(channels, channels, False),
            ]
        )

        self.decoder_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            out = base * config.channel_mults[level]
            for _ in range(config.num_res_blocks + 1):
                self.decoder_blocks.append(
                    block(channels + skip_channels.pop(), out, config.attention[level])
                )
                channels = out
            if level != 0:
                self.decoder_blocks.append(Upsample(channels))

        self.head = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), conv3x3(channels, image_channels)
        )
        self.downsampling_factor = 2 ** (levels - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t (B,) int64 in [0, T), s (B, P) -> predicted noise (B, C, H, W)."""
        time_emb = self.time_embedding(t)
        prototype_emb = self.prototype_embedding(s.to(time_emb.dtype))
        h = self.stem(x)
        skips = [h]
        for layer in self.encoder_blocks:
            h = layer(h, time_emb, prototype_emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.bottleneck_blocks:
            h = layer(h, time_emb, prototype_emb)
        for layer in self.decoder_blocks:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), time_emb, prototype_emb)
            else:
                h = layer(h)
        return self.head(h)
