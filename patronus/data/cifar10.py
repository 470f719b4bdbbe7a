"""CIFAR-10 from the "python version" batches (cifar-10-batches-py), read without executing code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from patronus.data.errors import DataLayoutError
from patronus.utils.safe_pickle import numpy_globals, safe_load

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
LAYOUT = """
DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch
(or DATA_DIR itself holding the batches); each a pickled dict with b"data" (N, 3072) uint8
and b"labels" (N,) as in https://www.cs.toronto.edu/~kriz/cifar.html (python version)
"""
# split -> its batch files
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _batch_dir(root: Path) -> Path:
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    raise DataLayoutError("CIFAR-10", f"no CIFAR-10 batches in {root}", LAYOUT)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataLayoutError("CIFAR-10", f"missing {path}", LAYOUT)
    try:
        batch = safe_load(path.read_bytes(), numpy_globals(), max_bytes=1 << 26, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as error:
        raise DataLayoutError("CIFAR-10", f"{path} is malformed: {error}", LAYOUT) from error
    if images.shape[0] != labels.shape[0]:
        raise DataLayoutError("CIFAR-10", f"{path}: images and labels disagree", LAYOUT)
    return images, labels


class CIFAR10(Dataset):
    """Items ``(image (3, 32, 32) in [-1, 1], label int64)``; split "train" (50k) or "test"."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in BATCHES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not Path(root).is_dir():
            raise DataLayoutError("CIFAR-10", f"data folder {root} does not exist", LAYOUT)
        folder = _batch_dir(Path(root))
        parts = [_read_batch(folder / name) for name in BATCHES[split]]
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float() / 127.5 - 1.0, self.labels[index]
