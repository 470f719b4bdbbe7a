"""Build a dataset by name from local files (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from patronus.data import celeba, chexpert, cifar10, fashion_mnist, image_folder
from patronus.data.celeba import CelebA
from patronus.data.chexpert import CheXpert
from patronus.data.cifar10 import CIFAR10
from patronus.data.errors import DataLayoutError
from patronus.data.fashion_mnist import FashionMNIST
from patronus.data.image_folder import FFHQ, ImageFolder
from patronus.data.size import dataset_size
from patronus.data.synthetic import SyntheticShapes

DATASETS = (
    "fashion-mnist",
    "cifar10",
    "celeba",
    "celeba-biased",
    "ffhq",
    "chexpert",
    "folder",
    "synthetic",
    "synthetic-shortcut",
)
# one collection of images each: their "test" split is their training images
WITHOUT_TEST_SPLIT = ("ffhq", "folder")
# the planted shortcut: an object's colour follows its shape (square red, circle green, triangle
# blue) in 95% of the images
SHORTCUT: dict[str, Any] = {"correlate": ("shape", "colour"), "correlation": 0.95}


def dataset_splits(name: str) -> tuple[str, ...]:
    """The ``split`` values ``build_dataset`` takes for the dataset ``name``."""
    if name in ("celeba", "celeba-biased"):
        return (*celeba.SPLITS, "all")
    if name == "chexpert":
        return (*chexpert.SPLITS, "test")  # "test": its valid split, the public held-out set
    if name == "cifar10":
        return tuple(cifar10.BATCHES)
    if name == "fashion-mnist":
        return tuple(fashion_mnist.FILES)
    return ("train", "test")  # generated (synthetic) or one collection (ffhq, folder)


def has_test_split(name: str) -> bool:
    """Whether the dataset's "test" split holds other images than its "train" split."""
    return name not in WITHOUT_TEST_SPLIT


def _require_dir(name: str, data_dir: str | Path | None, layout: str) -> Path:
    if data_dir is None:
        raise DataLayoutError(name, "this dataset needs --data-dir", layout)
    return Path(data_dir)


def build_dataset(
    name: str,
    data_dir: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """A dataset of ``(image in [-1, 1], label)`` items.

    ``image_size`` defaults to the paper's for each dataset (CIFAR-10 is always 32); ``channels``
    applies to the synthetic and folder sets (the others have their own: gray Fashion-MNIST and
    CheXpert, RGB the rest; a model of another shape is refused where the two meet). The
    synthetic set uses ``seed`` and has ``limit`` images (default 10000); ``limit`` keeps the
    first images of the others. Fashion-MNIST finds the Debian package by itself when
    ``data_dir`` is None. FFHQ and folders are one collection each: ``split`` does not change
    their images (:func:`has_test_split`); CheXpert's "test" is its public "valid" split; a
    folder's labels are its class folders when every image lies in one of two or more, else 0.
    """
    if name in DATASETS and split not in dataset_splits(name):
        raise ValueError(f"{name} splits are {', '.join(dataset_splits(name))}; got {split!r}")
    for field, value in (("image_size", image_size), ("channels", channels), ("limit", limit)):
        if value is not None and value < 1:  # 0 is not "the default"
            raise ValueError(f"{field} must be >= 1 or None, got {value}")
    if name in ("synthetic", "synthetic-shortcut"):
        split_seed = seed if split == "train" else seed + 1  # other splits: other images
        planted = SHORTCUT if name == "synthetic-shortcut" else {}
        return SyntheticShapes(
            limit or 10000, image_size or 32, channels or 3, split_seed, **planted
        )
    if name == "fashion-mnist":
        return FashionMNIST(data_dir, split, image_size or 32, limit)
    if name == "cifar10":
        dataset: Dataset = CIFAR10(_require_dir(name, data_dir, cifar10.LAYOUT), split)
    elif name in ("celeba", "celeba-biased"):
        biased = name == "celeba-biased"
        dataset = CelebA(
            _require_dir(name, data_dir, celeba.LAYOUT), split, image_size or 64, biased=biased
        )
    elif name == "ffhq":
        dataset = FFHQ(_require_dir(name, data_dir, image_folder.FFHQ_LAYOUT), image_size or 64)
    elif name == "chexpert":
        held_out = "valid" if split == "test" else split  # its public held-out set
        dataset = CheXpert(
            _require_dir(name, data_dir, chexpert.LAYOUT), held_out, image_size or 224
        )
    elif name == "folder":
        dataset = ImageFolder(
            _require_dir(name, data_dir, image_folder.LAYOUT),
            image_size or 64,
            channels or 3,
            labels_from_folders=None,
        )
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit is not None and limit < dataset_size(dataset):
        dataset = Subset(dataset, range(limit))
    return dataset
