"""The prototype block's encoder: a Conv2d + ReLU stack with exact receptive-field geometry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one feature cell in input pixels.

    Pixel i covers [i, i + 1). A cell at index k along an axis is centred at
    ``start + k * jump`` and covers ``size`` pixels around it.
    """

    size: int
    jump: int
    start: float

    def centre(self, index: int) -> float:
        return self.start + index * self.jump

    def span(self, index: int, length: int) -> tuple[int, int]:
        """Half-open pixel range [lo, hi) of cell ``index`` along an axis of ``length`` pixels."""
        lo = math.floor(self.centre(index) - self.size / 2)
        return max(lo, 0), min(lo + self.size, length)

    def box(self, row: int, col: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Half-open pixel box (top, left, bottom, right) of cell (row, col), clamped."""
        top, bottom = self.span(row, image_size[0])
        left, right = self.span(col, image_size[1])
        return top, left, bottom, right


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Half-open pixel boxes (N, 4) (top, left, bottom, right) -> (N, H, W) bool masks."""
    rows = torch.arange(height, device=boxes.device)[None, :, None]
    cols = torch.arange(width, device=boxes.device)[None, None, :]
    top, left, bottom, right = (boxes[:, k, None, None] for k in range(4))
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def receptive_field(
    kernel_sizes: Sequence[int], strides: Sequence[int], paddings: Sequence[int]
) -> ReceptiveField:
    """Receptive field of a conv stack, from the first layer to the last."""
    size, jump, start = 1, 1, 0.5
    for kernel, stride, padding in zip(kernel_sizes, strides, paddings, strict=True):
        start += ((kernel - 1) / 2 - padding) * jump
        size += (kernel - 1) * jump
        jump *= stride
    return ReceptiveField(size=size, jump=jump, start=start)


class ProtoEncoder(nn.Module):
    """Conv2d + ReLU stack (no normalisation) mapping images to a feature map of D channels.

    Args:
        in_channels: image channels.
        channels: output channels per layer; the last is the prototype dimension D.
        kernel_sizes, strides, paddings: per layer.

    Conv weights are initialised N(0, 0.1^2), biases 0, as in the paper. Parameter names follow
    the original (``features.{0,2,4,...}``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_sizes: Sequence[int],
        strides: Sequence[int],
        paddings: Sequence[int],
    ) -> None:
        super().__init__()
        if (
            not (len(channels) == len(kernel_sizes) == len(strides) == len(paddings))
            or not channels
        ):
            raise ValueError(
                "channels, kernel_sizes, strides and paddings must be non-empty and of one length"
            )
        layers: list[nn.Module] = []
        previous = in_channels
        for out, kernel, stride, padding in zip(
            channels, kernel_sizes, strides, paddings, strict=True
        ):
            conv = nn.Conv2d(previous, out, kernel, stride=stride, padding=padding)
            nn.init.normal_(conv.weight, 0.0, 0.1)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # (built with a bias)
            layers += [conv, nn.ReLU()]
            previous = out
        self.features = nn.Sequential(*layers)
        self.kernel_sizes = tuple(kernel_sizes)
        self.strides = tuple(strides)
        self.paddings = tuple(paddings)
        self.out_channels = previous
        self.receptive_field = receptive_field(kernel_sizes, strides, paddings)
        self._box_tables: dict[tuple[tuple[int, int], torch.device], torch.Tensor] = {}

    def output_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Feature-map (H', W') for an input of (H, W) pixels."""
        height, width = image_size
        for kernel, stride, padding in zip(
            self.kernel_sizes, self.strides, self.paddings, strict=True
        ):
            height = (height + 2 * padding - kernel) // stride + 1
            width = (width + 2 * padding - kernel) // stride + 1
        if height < 1 or width < 1:
            raise ValueError(f"image of {image_size} is too small for this encoder")
        return height, width

    def patch_box(self, patch_index: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Pixel box (top, left, bottom, right) of a flat feature-cell index into H'*W'."""
        _, width = self.output_size(image_size)
        return self.receptive_field.box(patch_index // width, patch_index % width, image_size)

    def patch_boxes(self, patch_index: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Flat feature-cell indices (...) -> pixel boxes (..., 4) int64 on the indices' device
        (see :meth:`patch_box`): a lookup in a per-cell table, with no copy to the host."""
        key = ((image_size[0], image_size[1]), patch_index.device)
        table = self._box_tables.get(key)
        if table is None:
            height, width = self.output_size(image_size)
            cells = [self.patch_box(index, image_size) for index in range(height * width)]
            table = torch.tensor(cells, dtype=torch.long, device=patch_index.device)
            self._box_tables[key] = table
        return table[patch_index.long()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> features (B, D, H', W')."""
        return self.features(images)
