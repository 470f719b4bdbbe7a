"""Fashion-MNIST from its IDX files (never downloaded): 28x28 gray resized to 32x32."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from patronus.data.errors import DataLayoutError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
LAYOUT = """
DATA_DIR/train-images-idx3-ubyte[.gz]   DATA_DIR/train-labels-idx1-ubyte[.gz]
DATA_DIR/t10k-images-idx3-ubyte[.gz]    DATA_DIR/t10k-labels-idx1-ubyte[.gz]
(Debian: `apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist)
"""


def default_root() -> Path | None:
    """``PATRONUS_FASHION_MNIST`` if set, else the Debian package's folder if installed."""
    if "PATRONUS_FASHION_MNIST" in os.environ:
        return Path(os.environ["PATRONUS_FASHION_MNIST"])
    return DEBIAN_DIR if DEBIAN_DIR.is_dir() else None


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataLayoutError("Fashion-MNIST", f"{name}[.gz] not found in {root}", LAYOUT)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
            raise ValueError(f"bad IDX header {data[:4].hex()}")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise ValueError(f"{body.size} bytes of data for shape {shape}")
    except (OSError, ValueError, struct.error, EOFError) as error:
        raise DataLayoutError(
            "Fashion-MNIST", f"{path} is not a valid IDX file: {error}", LAYOUT
        ) from error
    return body.reshape(shape)


class FashionMNIST(Dataset):
    """Items ``(image (1, size, size) in [-1, 1], label int64)``.

    Args:
        root: folder with the IDX files; default: ``default_root()``.
        split: "train" (60k) or "test" (10k).
        image_size: output size (the paper resizes 28 -> 32, bilinear, rounded to uint8 as the
            original's PIL pipeline does).
        limit: keep only the first ``limit`` images.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        image_size: int = 32,
        limit: int | None = None,
    ) -> None:
        if split not in FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        found = Path(root) if root is not None else default_root()
        if found is None or not found.is_dir():
            raise DataLayoutError(
                "Fashion-MNIST", f"data folder {found or '(none given)'} does not exist", LAYOUT
            )
        image_file, label_file = (_find(found, name) for name in FILES[split])
        images = read_idx(image_file)
        labels = read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataLayoutError(
                "Fashion-MNIST",
                f"{image_file.name} {images.shape} and {label_file.name} {labels.shape} disagree",
                LAYOUT,
            )
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.root = found
        self.images = _resize_uint8(torch.from_numpy(images.copy()), image_size)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float() / 127.5 - 1.0, self.labels[index]


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 8192) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, size, size) uint8, bilinear, in chunks to bound memory."""
    images = images[:, None]
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    parts = [
        torch.nn.functional.interpolate(
            part.float(), size=(size, size), mode="bilinear", antialias=True
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(parts) if parts else images.new_zeros((0, 1, size, size))
