"""Datasets read from local files, and a synthetic dataset with known factors."""

from patronus.data.celeba import CelebA
from patronus.data.chexpert import CheXpert
from patronus.data.cifar10 import CIFAR10
from patronus.data.errors import DataLayoutError
from patronus.data.fashion_mnist import FashionMNIST
from patronus.data.image_folder import FFHQ, ImageFolder
from patronus.data.images import load_image
from patronus.data.registry import DATASETS, build_dataset
from patronus.data.synthetic import FACTOR_NAMES, FACTORS, SyntheticShapes

__all__ = [
    "CIFAR10",
    "DATASETS",
    "FACTORS",
    "FACTOR_NAMES",
    "FFHQ",
    "CelebA",
    "CheXpert",
    "DataLayoutError",
    "FashionMNIST",
    "ImageFolder",
    "SyntheticShapes",
    "build_dataset",
    "load_image",
]
