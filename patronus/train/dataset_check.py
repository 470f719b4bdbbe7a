"""What the trainer reads of a dataset before training: (image, label) items, images of the
model's shape, floating point and in [-1, 1] (judged on the first few)."""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import Dataset

from patronus.data.size import dataset_size
from patronus.models.patronus import RANGE_TOLERANCE

SAMPLED = 16  # items read to judge the value range


def check_training_dataset(dataset: Dataset, image_shape: tuple[int, int, int]) -> None:
    """Raise on items that are not (image (C, H, W), label), on another shape, an integer dtype,
    values outside [-1, 1] or NaN; warn when the first images all lie in [0, 1] (likely pixels
    not yet mapped to [-1, 1] by x * 2 - 1: they would train, on the wrong range)."""
    first = dataset[0]
    if not isinstance(first, tuple | list) or len(first) < 2 or not torch.is_tensor(first[0]):
        raise ValueError(
            "dataset items must be (image, label) pairs, the image a (C, H, W) tensor; got "
            f"{type(first).__name__}"
        )
    image = first[0]
    if tuple(image.shape) != image_shape:
        raise ValueError(
            f"dataset images are {tuple(image.shape)} but the model expects {image_shape}; set "
            "the preset's image size and channels to match"
        )
    if not image.is_floating_point():
        raise TypeError(f"dataset images must be floating point in [-1, 1], got {image.dtype}")
    count = min(dataset_size(dataset), SAMPLED)
    images = torch.stack([image, *(dataset[i][0] for i in range(1, count))]).float()
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"the first {count} dataset images hold NaN or Inf")
    low, high = float(images.min()), float(images.max())
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"dataset images must be in [-1, 1]; the first {count} span [{low:.3g}, {high:.3g}]"
        )
    if low >= 0:
        warnings.warn(
            f"the first {count} dataset images lie in [{low:.3g}, {high:.3g}]: patronus expects "
            "[-1, 1] (x * 2 - 1 maps [0, 1] there)",
            stacklevel=3,
        )
