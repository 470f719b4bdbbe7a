"""Image files -> tensors in [-1, 1] for the datasets (Pillow; no torchvision)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from patronus.data.errors import ImageFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def load_image(path: str | Path, channels: int, size: int | None) -> torch.Tensor:
    """Read an image file -> (channels, size, size) float32 in [-1, 1] (bilinear resize).

    8-bit images map [0, 255] to [-1, 1]; 16-bit grayscale (PNG mode I;16, or I holding values
    up to 65535) maps [0, 65535]. An unreadable, truncated or oversized file (Pillow's
    decompression-bomb limit) raises :class:`ImageFileError` naming the file."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                pixels = _unit_pixels(image, channels, size)
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, OSError, SyntaxError) as error:  # fmt: skip
        raise ImageFileError(f"{path}: not a readable image ({error})") from error
    return torch.from_numpy(pixels).permute(2, 0, 1) * 2.0 - 1.0


def _unit_pixels(image: Image.Image, channels: int, size: int | None) -> np.ndarray:
    """A loaded image -> float32 (size, size, channels) in [0, 1]."""
    wide = _WIDE_MODES.get(image.mode)
    if image.mode == "I":
        high = image.getextrema()[1]  # one band: (low, high)
        wide = 65535.0 if high <= 65535 else 2.0**32 - 1  # type: ignore[operator]
    if wide is not None:  # 16-bit (or 32-bit) gray: scale, then resize in float
        values = np.asarray(image, dtype=np.float64) / wide
        plane = Image.fromarray(values.clip(0, 1).astype(np.float32), mode="F")
        if size is not None and plane.size != (size, size):
            plane = plane.resize((size, size), Image.Resampling.BILINEAR)
        gray = np.asarray(plane, dtype=np.float32).clip(0, 1)[..., None]
        return np.repeat(gray, channels, axis=2)
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float32 (C, H, W) in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    return tensor.float() / 127.5 - 1.0
