"""A synthetic dataset of one shape on a background, with known and controllable factors.

Factors (all categorical): shape (square, circle, triangle), colour (red, green, blue, yellow),
size (small, large), x and y position (3 cells each) and background (dark, light). Each image is
a deterministic function of (seed, index). ``correlate=("shape", "colour")`` plants a shortcut:
with probability ``correlation`` the second factor is tied to the first
(value = first value mod the second's count); otherwise they are independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("square", "circle", "triangle"),
    "colour": ("red", "green", "blue", "yellow"),
    "size": ("small", "large"),
    "x": ("left", "centre", "right"),
    "y": ("top", "middle", "bottom"),
    "background": ("dark", "light"),
}
FACTOR_NAMES = tuple(FACTORS)
_COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.15, 0.3, 0.95], [0.95, 0.85, 0.1]])
_BACKGROUNDS = np.array([0.1, 0.55])


class SyntheticShapes(Dataset):
    """``length`` images (channels, image_size, image_size) in [-1, 1] and their factors.

    Items are ``(image, factors)`` with factors a (6,) int64 tensor in the order of
    ``FACTOR_NAMES``. ``box(index)`` gives the object's pixel box (top, left, bottom, right).
    """

    def __init__(
        self,
        length: int = 10000,
        image_size: int = 32,
        channels: int = 3,
        seed: int = 0,
        correlate: Sequence[str] | None = None,
        correlation: float = 1.0,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 12:
            raise ValueError(f"image_size must be >= 12, got {image_size}")
        if correlate is not None:
            if len(correlate) != 2 or any(name not in FACTORS for name in correlate):
                raise ValueError(f"correlate must name two of {FACTOR_NAMES}, got {correlate}")
            if correlate[0] == correlate[1]:
                raise ValueError("correlate needs two different factors")
        if not 0.0 <= correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {correlation}")
        self.length = length
        self.image_size = image_size
        self.channels = channels
        self.seed = seed
        self.correlate = tuple(correlate) if correlate else None
        self.correlation = correlation
        self.factor_table = self._draw_factors()  # (length, 6) int64

    def _draw_factors(self) -> torch.Tensor:
        rng = np.random.default_rng(self.seed)
        columns = [rng.integers(0, len(values), self.length) for values in FACTORS.values()]
        table = np.stack(columns, axis=1)
        if self.correlate is not None:
            first, second = (FACTOR_NAMES.index(name) for name in self.correlate)
            tied = rng.random(self.length) < self.correlation
            table[tied, second] = table[tied, first] % len(FACTORS[self.correlate[1]])
        return torch.from_numpy(table).long()

    def __len__(self) -> int:
        return self.length

    @property
    def labels(self) -> torch.Tensor:
        """Every image's factors (N, 6), the label of its item."""
        return self.factor_table

    def factors(self, index: int) -> dict[str, str]:
        row = self.factor_table[index].tolist()
        return {name: FACTORS[name][value] for name, value in zip(FACTOR_NAMES, row, strict=True)}

    def _geometry(self, index: int) -> tuple[float, float, float]:
        _, _, size, x, y, _ = self.factor_table[index].tolist()
        n = self.image_size
        radius = n * (0.12 if size == 0 else 0.2)
        cell = n / 3
        return (y + 0.5) * cell, (x + 0.5) * cell, radius

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The object's pixel box (top, left, bottom, right), half-open."""
        mask = self._mask(index)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1

    def _mask(self, index: int) -> np.ndarray:
        shape = int(self.factor_table[index, 0])
        cy, cx, radius = self._geometry(index)
        yy, xx = np.mgrid[0 : self.image_size, 0 : self.image_size] + 0.5
        dy, dx = yy - cy, xx - cx
        if shape == 0:
            return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
        if shape == 1:
            return dy**2 + dx**2 <= radius**2
        # triangle pointing up: inside the base line and both slanted edges
        return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        colour_index = int(self.factor_table[index, 1])
        background = _BACKGROUNDS[int(self.factor_table[index, 5])]
        image = np.full((self.image_size, self.image_size, 3), background)
        image[self._mask(index)] = _COLOURS[colour_index]
        if self.channels == 1:
            image = image @ np.array([[0.299], [0.587], [0.114]])
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() * 2.0 - 1.0
        return tensor, self.factor_table[index]
