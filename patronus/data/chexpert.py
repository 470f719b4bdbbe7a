"""CheXpert chest radiographs (CSV + JPEG folders), gray, resized to 224x224."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from patronus.data.errors import DataLayoutError
from patronus.data.images import load_image

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
SPLITS = ("train", "valid")  # the CSVs of the public download
LAYOUT = """
DATA_DIR/train.csv, DATA_DIR/valid.csv   (columns Path, Sex, Age, Frontal/Lateral, AP/PA,
                                          then the 14 observations: 1.0, 0.0, -1.0 or empty)
DATA_DIR/train/patient00001/study1/view1_frontal.jpg ...
The CSV's Path ("CheXpert-v1.0-small/train/...") is resolved against DATA_DIR's parent,
or against DATA_DIR after dropping its first component.
"""


def _resolve(root: Path, relative: str) -> Path:
    parts = Path(relative).parts
    for candidate in (root.parent / relative, root.joinpath(*parts[1:]), root / relative):
        if candidate.is_file():
            return candidate
    raise DataLayoutError("CheXpert", f"image {relative} not found below {root}", LAYOUT)


def _label(value: str) -> float:
    value = value.strip()
    return math.nan if value == "" else float(value)


class CheXpert(Dataset):
    """Items ``(image (1, size, size) in [-1, 1], labels (14,) float32)``.

    Labels are 1 (positive), 0 (negative), -1 (uncertain) or NaN (not mentioned), in the order of
    ``OBSERVATIONS``. ``split`` is "train" or "valid"; ``frontal_only`` keeps frontal views.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 224,
        frontal_only: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        root = Path(root)
        table = root / f"{split}.csv"
        if not table.is_file():
            raise DataLayoutError("CheXpert", f"missing {table}", LAYOUT)
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"Path", *OBSERVATIONS} - set(reader.fieldnames or ())
            if missing:
                raise DataLayoutError(
                    "CheXpert", f"{table} lacks columns {sorted(missing)}", LAYOUT
                )
            rows = [
                row
                for row in reader
                if not frontal_only or row.get("Frontal/Lateral", "Frontal") == "Frontal"
            ]
        try:
            labels = [[_label(row[name]) for name in OBSERVATIONS] for row in rows]
        except ValueError as error:
            raise DataLayoutError(
                "CheXpert", f"{table} has a bad label: {error}", LAYOUT
            ) from error
        self.root = root
        self.attribute_names = list(OBSERVATIONS)  # the label columns, as CelebA names its own
        self.paths = [row["Path"] for row in rows]
        self.labels = torch.tensor(labels, dtype=torch.float32).reshape(-1, len(OBSERVATIONS))
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = _resolve(self.root, self.paths[index])
        return load_image(path, 1, self.image_size), self.labels[index]
