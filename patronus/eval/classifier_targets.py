"""What the project's feature classifier learns from a dataset's labels: its class, or its binary
attributes (a missing value is left out of the loss, not read as 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from patronus.data.size import dataset_size
from patronus.errors import PatronusError
from patronus.eval.attributes import attribute_table


class NoLabelsError(PatronusError, ValueError):
    """The dataset's labels give a classifier nothing to learn (one class, no attribute that
    takes both values)."""


@dataclass(frozen=True)
class ClassifierTargets:
    targets: torch.Tensor  # (N,) int64 class indices, or (N, A) float {0, 1} with NaN = missing
    names: list[str]  # ["class"] or the A attributes
    multilabel: bool

    @property
    def outputs(self) -> int:
        """Classes (softmax) or attributes (sigmoid): the classifier's output width."""
        return self.targets.shape[1] if self.multilabel else int(self.targets.max()) + 1


def classifier_targets(
    dataset: str, labels: torch.Tensor, names: list[str] | None = None
) -> ClassifierTargets:
    """Labels as the loaders return them (N, ...) -> the classifier's targets.

    Class-labelled sets (Fashion-MNIST, CIFAR-10, folders of class folders) give their class;
    the others their binary attributes that take both values somewhere (CelebA's 40, CheXpert's
    observations with uncertain and unmentioned ones missing, the synthetic set's factor values).
    Raises :class:`NoLabelsError` when nothing is left to learn (FFHQ, a folder without class
    folders): a classifier trained on one class keeps its random initial features.
    """
    table = attribute_table(dataset, labels, names)
    if table.names == ["class"] and not table.binary[0]:
        classes = table.values[:, 0]
        if torch.unique(classes).numel() < 2:
            raise NoLabelsError(f"every {dataset} image has the same class label")
        return ClassifierTargets(classes.long(), ["class"], multilabel=False)
    binary = table.binary_only()
    values = binary.values
    seen_both = [
        i for i in range(values.shape[1]) if (values[:, i] == 0).any() and (values[:, i] == 1).any()
    ]
    if not seen_both:
        raise NoLabelsError(f"no {dataset} attribute takes both values")
    return ClassifierTargets(
        values[:, seen_both].float(), [binary.names[i] for i in seen_both], multilabel=True
    )


class WithTargets(Dataset):
    """Items ``(image, targets[index])`` of a dataset whose own labels were turned into
    :func:`classifier_targets`."""

    def __init__(self, dataset: Dataset, targets: torch.Tensor) -> None:
        size = dataset_size(dataset)
        if size != len(targets):
            raise ValueError(f"{size} images but {len(targets)} targets")
        self.dataset = dataset
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index][0], self.targets[index]
