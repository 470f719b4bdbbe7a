"""Tensors in [-1, 1] -> uint8 pixels, image grids and PNG files (Pillow; no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255] (clamped), same shape."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def as_8_bit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as an 8-bit file holds them: :func:`to_uint8`, then back to float32 in
    [-1, 1] the way the datasets read 8-bit pixels (x / 127.5 - 1); same shape, on the CPU."""
    return to_uint8(images).float() / 127.5 - 1.0


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> one uint8 (H', W', C) grid, ``nrow`` images per row."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty (B, C, H, W) batch, got {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / nrow)
    grid = torch.full(
        (channels, rows * (height + padding) + padding, nrow * (width + padding) + padding),
        255,
        dtype=torch.uint8,
    )
    pixels = to_uint8(images)
    for index in range(batch):
        top = padding + (index // nrow) * (height + padding)
        left = padding + (index % nrow) * (width + padding)
        grid[:, top : top + height, left : left + width] = pixels[index]
    return grid.permute(1, 2, 0)


def save_image(pixels: torch.Tensor, path: str | Path) -> Path:
    """Write uint8 (H, W, C) pixels as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = pixels.numpy()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)
    return path


def save_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2
) -> Path:
    """Write a batch (B, C, H, W) in [-1, 1] as one PNG grid; returns the path."""
    return save_image(make_grid(images, nrow, padding), path)


_BINOMIAL = torch.tensor([1.0, 2.0, 1.0]) / 4.0


def smooth(images: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3 binomial blurs of images (B, C, H, W), edges replicated; differentiable."""
    channels = images.shape[1]
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(images)
    kernel = kernel.expand(channels, 1, 3, 3)
    for _ in range(passes):
        images = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return images
