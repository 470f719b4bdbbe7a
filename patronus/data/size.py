"""The number of items of a map-style dataset, which is how patronus reads datasets."""

from __future__ import annotations

from collections.abc import Sized

from torch.utils.data import Dataset


def dataset_size(dataset: Dataset) -> int:
    """``len(dataset)``; a TypeError that says why for a dataset without a length (an
    ``IterableDataset``: patronus reads images by index, so it needs ``__len__`` and
    ``__getitem__``)."""
    if not isinstance(dataset, Sized):
        raise TypeError(
            f"a {type(dataset).__name__} has no length: patronus reads datasets by index, so it "
            "needs a map-style Dataset (with __len__ and __getitem__), not an iterable one"
        )
    return len(dataset)
