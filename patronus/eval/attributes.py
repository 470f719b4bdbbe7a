"""Attribute tables of the datasets: which label columns are binary attributes (ROC-AUC, TAD)
and which are class labels (accuracy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from patronus.data.synthetic import FACTORS


@dataclass(frozen=True)
class Attributes:
    names: list[str]
    values: torch.Tensor  # (N, A) float: {0, 1} for binary columns, class indices, NaN = missing
    binary: list[bool]
    groups: list[str]  # attributes of one group (values of one factor) are not compared for TAD

    def varying(self) -> list[str]:
        """The attributes that take two or more values (missing ones left out)."""
        return [
            name
            for name, column in zip(self.names, self.values.t(), strict=True)
            if column[~column.isnan()].unique().numel() >= 2
        ]

    def binary_only(self) -> Attributes:
        keep = [i for i, b in enumerate(self.binary) if b]
        return Attributes(
            [self.names[i] for i in keep],
            self.values[:, keep],
            [True] * len(keep),
            [self.groups[i] for i in keep],
        )


def attribute_table(
    dataset: str, labels: torch.Tensor, names: list[str] | None = None
) -> Attributes:
    """Labels as the loaders return them -> attributes.

    Class-labelled sets (Fashion-MNIST, CIFAR-10, folders): one class column. Synthetic shapes:
    each factor as a class column, and each value of each factor as a binary attribute
    ("colour=red"), so TAD and diagnosis can use them. CelebA: its 40 binary attributes (``names``
    from the loader). CheXpert: 14 observations, positive = 1, negative = 0, uncertain or not
    mentioned = missing.
    """
    if dataset in ("synthetic", "synthetic-shortcut"):
        columns, kinds, values, groups = [], [], [], []
        for index, (factor, options) in enumerate(FACTORS.items()):
            columns.append(factor)
            kinds.append(len(options) == 2)
            values.append(labels[:, index].float())
            groups.append(factor)
        for index, (factor, options) in enumerate(FACTORS.items()):
            if len(options) == 2:
                continue
            for value, option in enumerate(options):
                columns.append(f"{factor}={option}")
                kinds.append(True)
                values.append((labels[:, index] == value).float())
                groups.append(factor)
        return Attributes(columns, torch.stack(values, dim=1), kinds, groups)
    if dataset in ("celeba", "celeba-biased", "chexpert"):
        table = labels.float().clone()
        if dataset == "chexpert":
            table[table < 0] = float("nan")  # uncertain
        count = table.shape[1]
        columns = list(names or [f"attribute_{i}" for i in range(count)])
        return Attributes(columns, table, [True] * count, columns)
    return Attributes(["class"], labels.float().reshape(-1, 1), [False], ["class"])
