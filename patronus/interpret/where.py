"""Where: each prototype's similarity over an image, its winning patch's pixel box, and crops."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from patronus.models import Patronus
from patronus.nn.proto_encoder import ReceptiveField
from patronus.nn.prototype_layer import distance_to_activation


@dataclass(frozen=True)
class Localization:
    """Where every prototype fires in a batch of B images (P prototypes, H x W pixels)."""

    activations: torch.Tensor  # (B, P) the conditioning vector s
    cell_similarity: torch.Tensor  # (B, P, h, w) activation of every feature cell
    similarity: torch.Tensor  # (B, P, H, W) the same at pixel resolution
    patch_index: torch.Tensor  # (B, P) winning feature cell, flat into h * w
    boxes: torch.Tensor  # (B, P, 4) int64 (top, left, bottom, right) of the winning cell, half-open


def upsample_cells(
    values: torch.Tensor, field: ReceptiveField, image_size: tuple[int, int]
) -> torch.Tensor:
    """Feature-cell values (..., h, w) -> (..., H, W) by bilinear interpolation between the cells'
    receptive-field centres (start + k * jump, in pixel coordinates), constant beyond the outer
    centres. Exact geometry: a cell's value sits at the centre of the pixels it sees."""
    height, width = image_size
    grids = []
    for pixels, cells in ((height, values.shape[-2]), (width, values.shape[-1])):
        centres = torch.arange(pixels, dtype=torch.float64) + 0.5
        position = ((centres - field.start) / field.jump).clamp(0, cells - 1)
        low = position.floor().long().clamp(max=cells - 1)
        high = (low + 1).clamp(max=cells - 1)
        weight = (position - low).to(values.dtype)
        grids.append((low.to(values.device), high.to(values.device), weight.to(values.device)))
    (row_low, row_high, row_w), (col_low, col_high, col_w) = grids
    rows = (
        values[..., row_low, :] * (1 - row_w)[:, None] + values[..., row_high, :] * row_w[:, None]
    )
    return rows[..., col_low] * (1 - col_w) + rows[..., col_high] * col_w


@torch.no_grad()
def localize(model: Patronus, images: torch.Tensor) -> Localization:
    """Similarity maps, winning patches and their boxes for every prototype, batched.

    images (B, C, H, W) in [-1, 1] -> :class:`Localization`. Decoded images (unclipped edits)
    may overshoot the range a little: only their finiteness is checked.
    """
    model.check_images(images, clean=False)
    features = model.encoder(images)
    layer = model.prototype_layer
    distances = layer.distance_map(features)  # (B, P, h, w)
    cell_similarity = distance_to_activation(distances, layer.activation, layer.eps)
    output = layer(features)
    size = (model.config.image_size, model.config.image_size)
    similarity = upsample_cells(cell_similarity, model.encoder.receptive_field, size)
    return Localization(
        output.activations,
        cell_similarity,
        similarity,
        output.patch_index,
        model.patch_boxes(output.patch_index.cpu()),
    )


def crop(image: torch.Tensor, box: torch.Tensor | tuple[int, int, int, int]) -> torch.Tensor:
    """(C, H, W) image, box (top, left, bottom, right) -> the (C, h, w) crop."""
    top, left, bottom, right = (int(v) for v in box)
    return image[:, top:bottom, left:right]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of half-open pixel boxes (..., 4) (top, left, bottom, right)."""
    top = torch.maximum(a[..., 0], b[..., 0])
    left = torch.maximum(a[..., 1], b[..., 1])
    bottom = torch.minimum(a[..., 2], b[..., 2])
    right = torch.minimum(a[..., 3], b[..., 3])
    inter = (bottom - top).clamp_min(0) * (right - left).clamp_min(0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter.float() / (area_a + area_b - inter).clamp_min(1).float()
