"""Every label of a dataset at once, read from the loader's label table (no image is decoded)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from patronus.data.size import dataset_size


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Labels of every item, in order: (N,) class indices or (N, A) attribute values.

    The library's loaders keep their labels in ``labels``; a ``Subset`` of one picks its rows.
    Any other dataset is read item by item.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices))]
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels
    return torch.stack([torch.as_tensor(dataset[i][1]) for i in range(dataset_size(dataset))])
