"""Encode a dataset with a model's prototype block, in batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from patronus.data.size import dataset_size
from patronus.models import Patronus


@torch.no_grad()
def encode_dataset(
    model: Patronus,
    dataset: Dataset,
    limit: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` items -> (activations (N, P) float32, labels (N, ...))."""
    if limit is not None and limit < dataset_size(dataset):
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    activations, labels = [], []
    for images, targets in tqdm(loader, desc="encoding", disable=not progress):
        activations.append(model.encode(images.to(model.device)).float().cpu())
        labels.append(targets)
    return torch.cat(activations), torch.cat(labels)
