"""Generic image folders (and FFHQ, which is one): every image below a root, optionally by class."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from patronus.data.errors import DataLayoutError, ImageFileError
from patronus.data.images import IMAGE_SUFFIXES, load_image

LAYOUT = """
DATA_DIR/**/*.png|jpg|jpeg|bmp|webp|tif   (any depth)
With class labels: DATA_DIR/<class name>/*.png, one folder per class
"""
FFHQ_LAYOUT = """
DATA_DIR/**/*.png, e.g. DATA_DIR/images1024x1024/00000/00000.png
or DATA_DIR/thumbnails128x128/00000/00000.png (the official FFHQ folders)
"""


def find_images(root: Path) -> list[Path]:
    """Image files below ``root``, sorted; hidden files and folders (a name starting with ".",
    such as macOS's ._photo.png metadata or Jupyter's .ipynb_checkpoints) are left out."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


class ImageFolder(Dataset):
    """Items ``(image (channels, size, size) in [-1, 1], label int64)``.

    With ``labels_from_folders``, the label is the index of the image's top-level folder below
    ``root`` in ``self.classes`` (sorted; every image must lie in one); otherwise it is 0 and
    ``classes`` is empty. ``None`` takes the class folders when every image lies in one and
    there are two or more (torchvision's ImageFolder layout), else labels 0.
    """

    name = "image folder"
    layout = LAYOUT

    def __init__(
        self,
        root: str | Path,
        image_size: int = 64,
        channels: int = 3,
        labels_from_folders: bool | None = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataLayoutError(self.name, f"data folder {root} does not exist", self.layout)
        self.files = find_images(root)
        if not self.files:
            raise DataLayoutError(self.name, f"no images found below {root}", self.layout)
        self.root = root
        self.image_size = image_size
        self.channels = channels
        tops = [p.relative_to(root).parts for p in self.files]
        in_folders = all(len(parts) >= 2 for parts in tops)
        if labels_from_folders is None:
            labels_from_folders = in_folders and len({parts[0] for parts in tops}) >= 2
        if labels_from_folders:
            if not in_folders:
                raise DataLayoutError(
                    self.name, "labels_from_folders needs every image in a class folder", LAYOUT
                )
            self.classes = sorted({parts[0] for parts in tops})
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = torch.tensor([index[parts[0]] for parts in tops])
        else:
            self.classes = []
            self.labels = torch.zeros(len(self.files), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        try:
            image = load_image(path, self.channels, self.image_size)
        except ImageFileError as error:
            raise DataLayoutError(self.name, f"cannot read {error}", self.layout) from error
        return image, self.labels[index]


class FFHQ(ImageFolder):
    """FFHQ as a folder of PNGs, resized to ``image_size`` (64 in the paper); label 0."""

    name = "FFHQ"
    layout = FFHQ_LAYOUT

    def __init__(self, root: str | Path, image_size: int = 64) -> None:
        super().__init__(root, image_size=image_size, channels=3)
