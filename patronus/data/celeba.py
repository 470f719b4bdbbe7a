"""CelebA aligned images with their 40 binary attributes and the official split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from patronus.data.errors import DataLayoutError
from patronus.data.images import load_image

LAYOUT = """
DATA_DIR/img_align_celeba/000001.jpg ...   (178x218 aligned JPEGs)
DATA_DIR/list_attr_celeba.txt              (count line, 40 attribute names, "000001.jpg -1 1 ...")
DATA_DIR/list_eval_partition.txt           ("000001.jpg 0"; 0 train, 1 valid, 2 test)
(DATA_DIR/celeba/... as torchvision lays it out works too; so do the official download's
 Img/img_align_celeba/, Anno/list_attr_celeba.txt and Eval/list_eval_partition.txt, and Kaggle's
 img_align_celeba/img_align_celeba/, list_attr_celeba.csv and list_eval_partition.csv)
"""
SPLITS = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True)
class CelebAFiles:
    """Where one download keeps CelebA's parts."""

    attributes: Path
    partition: Path
    images: Path


def _candidates(root: Path) -> list[CelebAFiles]:
    kaggle_images = root / "img_align_celeba" / "img_align_celeba"
    return [
        *(
            CelebAFiles(
                folder / "list_attr_celeba.txt",
                folder / "list_eval_partition.txt",
                folder / "img_align_celeba",
            )
            for folder in (root, root / "celeba")  # torchvision's
        ),
        CelebAFiles(  # the official download's folders
            root / "Anno" / "list_attr_celeba.txt",
            root / "Eval" / "list_eval_partition.txt",
            root / "Img" / "img_align_celeba",
        ),
        CelebAFiles(  # Kaggle's
            root / "list_attr_celeba.csv",
            root / "list_eval_partition.csv",
            kaggle_images if kaggle_images.is_dir() else root / "img_align_celeba",
        ),
    ]


def find_celeba(root: Path) -> CelebAFiles:
    """The first known layout whose attribute file is in ``root``."""
    for files in _candidates(root):
        if files.attributes.is_file():
            return files
    raise DataLayoutError("CelebA", f"no list_attr_celeba.txt or .csv in {root}", LAYOUT)


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """list_attr_celeba.txt (or Kaggle's .csv) -> (attribute names, {filename: 40 values in
    {0, 1}})."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        if path.suffix == ".csv":  # "image_id,5_o_Clock_Shadow,...", then "000001.jpg,-1,1,..."
            names = lines[0].split(",")[1:]
            table, count = [line.split(",") for line in lines[1:]], len(lines) - 1
        else:  # the count, the names, then "000001.jpg -1  1 ..."
            count, names = int(lines[0].strip()), lines[1].split()
            table = [line.split() for line in lines[2 : 2 + count]]
        rows = {}
        for fields in table:
            values = [int(v) for v in fields[1:]]
            if len(values) != len(names) or any(v not in (-1, 1) for v in values):
                raise ValueError(f"bad row {fields!r}")
            rows[fields[0].strip()] = [(v + 1) // 2 for v in values]
    except (IndexError, ValueError) as error:
        raise DataLayoutError("CelebA", f"{path} is malformed: {error}", LAYOUT) from error
    if len(rows) != count:
        raise DataLayoutError("CelebA", f"{path} announces {count} rows, has {len(rows)}", LAYOUT)
    return [name.strip() for name in names], rows


def read_partition(path: Path) -> dict[str, int]:
    """list_eval_partition.txt ("000001.jpg 0") or Kaggle's .csv (a header, "000001.jpg,0")."""
    if not path.is_file():
        raise DataLayoutError("CelebA", f"missing {path}", LAYOUT)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".csv":
        lines = [line.replace(",", " ") for line in lines[1:]]
    try:
        return {name: int(part) for name, part in (line.split() for line in lines)}
    except ValueError as error:
        raise DataLayoutError("CelebA", f"{path} is malformed: {error}", LAYOUT) from error


def biased_subset(
    files: list[str], attributes: dict[str, list[int]], names: list[str]
) -> list[str]:
    """The paper's biased subset: (Blond_Hair or Brown_Hair) and Smiling, or Black_Hair and not
    Smiling (other hair colours dropped)."""
    missing = {"Blond_Hair", "Brown_Hair", "Black_Hair", "Smiling"} - set(names)
    if missing:
        raise DataLayoutError("CelebA", f"the attribute file lacks {sorted(missing)}", LAYOUT)
    blond, brown, black, smiling = (
        names.index(n) for n in ("Blond_Hair", "Brown_Hair", "Black_Hair", "Smiling")
    )

    def keep(row: list[int]) -> bool:
        if row[smiling]:
            return bool(row[blond] or row[brown]) and not row[black]
        return bool(row[black]) and not (row[blond] or row[brown])

    return [name for name in files if keep(attributes[name])]


class CelebA(Dataset):
    """Items ``(image (3, size, size) in [-1, 1], attributes (40,) int64 in {0, 1})``.

    Images are resized from 178x218 to ``image_size`` squared (the paper's preprocessing).
    ``split`` is "train", "valid", "test" or "all". ``biased`` keeps the subset of the paper's
    shortcut experiment: blond and brown hair only when smiling, black hair only when not.
    """

    def __init__(
        self, root: str | Path, split: str = "train", image_size: int = 64, biased: bool = False
    ) -> None:
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {[*SPLITS, 'all']}, got {split!r}")
        if not Path(root).is_dir():
            raise DataLayoutError("CelebA", f"data folder {root} does not exist", LAYOUT)
        files = find_celeba(Path(root))
        self.attribute_names, attributes = read_attributes(files.attributes)
        partition = read_partition(files.partition)
        self.image_dir = files.images
        if not self.image_dir.is_dir():
            raise DataLayoutError("CelebA", f"missing folder {self.image_dir}", LAYOUT)
        self.files = sorted(
            name for name in attributes if split == "all" or partition.get(name) == SPLITS[split]
        )
        if biased:
            self.files = biased_subset(self.files, attributes, self.attribute_names)
        self.attributes = torch.tensor([attributes[name] for name in self.files], dtype=torch.long)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> torch.Tensor:
        """Every image's 40 attributes (N, 40) in {0, 1}, the label of its item."""
        return self.attributes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.image_dir / self.files[index]
        if not path.is_file():
            raise DataLayoutError("CelebA", f"missing image {path}", LAYOUT)
        return load_image(path, 3, self.image_size), self.attributes[index]
