"""Prototype quality (the paper's evaluation): linear probes, TAD and captured attributes, on
held-out folds.

- Linear probes: 5-fold cross-validation, features standardised on each training fold, logistic
  regression per attribute; ROC-AUC on the held-out fold for binary attributes, accuracy for class
  labels (reported under its own name). Needs scikit-learn (``pip install scikit-learn``).
- TAD (total AUROC difference): AUROC_ij = max(AUC(y_i, s_j), AUC(y_i, -s_j)). On each fold the
  best and second-best prototype of attribute i are chosen on the training part and their AUROC
  gap is measured on the held-out part (the original measured it where it chose). An attribute is
  captured when its best held-out AUROC is at least 0.75 and its entropy-reduction proportion
  max_k I(y_i; y_k) / H(y_i) over the other attributes is at most 0.2; TAD sums the gaps of the
  captured attributes. Values are fold means.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from patronus.errors import MissingDependencyError
from patronus.eval._inputs import check_features
from patronus.eval.roc import factor_auroc, roc_auc


def fold_indices(count: int, folds: int = 5, seed: int = 0) -> list[torch.Tensor]:
    """A seeded permutation of range(count) split into ``folds`` near-equal held-out parts."""
    if count < folds:
        raise ValueError(f"need at least {folds} samples for {folds} folds, got {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return list(order.tensor_split(folds))


def _split(count: int, held_out: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(count, dtype=torch.bool)
    mask[held_out] = False
    return mask.nonzero().flatten()


def _check_probe_inputs(
    activations: torch.Tensor, labels: torch.Tensor, names: Sequence[str] | None = None
) -> None:
    check_features("activations", activations)
    if labels.dim() != 2 or labels.shape[0] != activations.shape[0]:
        raise ValueError(
            f"labels must be (N, A) = ({activations.shape[0]}, A), one row per activation row, "
            f"got {tuple(labels.shape)}"
        )
    if names is not None and len(names) != labels.shape[1]:
        raise ValueError(f"{len(names)} names for {labels.shape[1]} label columns")


def linear_probes(
    activations: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    folds: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, float | str]]:
    """Per attribute (columns of ``labels`` (N, A)): {"metric": "roc_auc" | "accuracy", "mean",
    "std", "folds"} over the held-out folds. Binary columns get ROC-AUC, others accuracy; an
    attribute no fold can score (a single value in its training part) has folds 0, mean and std
    NaN (null in JSON), rather than going missing; with one fold scored the std is NaN."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:
        message = "linear probes need scikit-learn: pip install scikit-learn"
        raise MissingDependencyError(message) from error
    _check_probe_inputs(activations, labels, names)
    x = activations.double().numpy()
    results = {}
    parts = fold_indices(len(x), folds, seed)
    for column, name in enumerate(names):
        y = labels[:, column]
        valid = ~torch.isnan(y.double())
        binary = set(y[valid].long().unique().tolist()) <= {0, 1}
        scores = []
        for held_out in parts:
            train = _split(len(x), held_out)
            train = train[valid[train]]
            test = held_out[valid[held_out]]
            y_train, y_test = y[train].long().numpy(), y[test].long().numpy()
            if len(set(y_train.tolist())) < 2 or len(test) == 0:
                continue
            scaler = StandardScaler().fit(x[train])
            model = LogisticRegression(max_iter=2000).fit(scaler.transform(x[train]), y_train)
            x_test = scaler.transform(x[test])
            if binary:
                score = float(
                    roc_auc(
                        torch.from_numpy(model.decision_function(x_test)), torch.from_numpy(y_test)
                    )
                )
            else:
                score = float((model.predict(x_test) == y_test).mean())
            if not math.isnan(score):
                scores.append(score)
        values = torch.tensor(scores, dtype=torch.float64)
        results[name] = {
            "metric": "roc_auc" if binary else "accuracy",
            "mean": float(values.mean()) if scores else math.nan,
            "std": float(values.std()) if len(scores) > 1 else math.nan,  # one fold: no spread
            "folds": len(scores),
        }
    return results


def entropy(labels: torch.Tensor) -> float:
    counts = torch.bincount(labels.long()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    joint = a.long() * (int(b.max()) + 1) + b.long()
    return entropy(a) + entropy(b) - entropy(joint)


def entropy_reduction(
    labels: torch.Tensor, groups: Sequence[Hashable] | None = None
) -> torch.Tensor:
    """(N, A) binary labels -> (A,) max_k I(y_i; y_k) / H(y_i) over the other attributes
    (attributes of one group, e.g. the one-vs-rest values of one factor, are not compared).
    NaN marks a missing label: each pair is measured on the images where both are known."""
    count = labels.shape[1]
    groups = list(groups) if groups is not None else list(range(count))
    known = ~torch.isnan(labels.double())
    result = torch.zeros(count, dtype=torch.float64)
    for i in range(count):
        for k in range(count):
            both = known[:, i] & known[:, k]
            if groups[k] == groups[i] or not bool(both.any()):
                continue
            first, second = labels[both, i].long(), labels[both, k].long()
            h = entropy(first)
            if h > 0:
                result[i] = max(float(result[i]), mutual_information(first, second) / h)
    return result


def auroc_matrix(activations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, P) activations, (N, A) binary labels -> (A, P) max(AUC(y, s), AUC(y, -s)); a NaN
    label (missing) leaves that image out of its attribute's AUROCs."""
    _check_probe_inputs(activations, labels)
    rows = []
    for i in range(labels.shape[1]):
        known = ~torch.isnan(labels[:, i].double())
        rows.append(factor_auroc(activations[known], labels[known, i]))
    return torch.stack(rows)


def tad(
    activations: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    min_auroc: float = 0.75,
    max_entropy_reduction: float = 0.2,
    groups: Sequence[str] | None = None,
) -> dict:
    """TAD, the captured attributes and the per-attribute gaps, on held-out folds (``groups``:
    see :func:`entropy_reduction`). Labels (N, A) are 0 / 1, NaN where missing (CheXpert's
    uncertain and unmentioned findings): each attribute is measured on the images that have it."""
    _check_probe_inputs(activations, labels, names)
    if activations.shape[1] < 2:
        raise ValueError(f"TAD needs at least 2 prototypes, got {activations.shape[1]}")
    labels = labels.double()
    reduction = entropy_reduction(labels, groups)
    gaps = torch.zeros(folds, labels.shape[1], dtype=torch.float64)
    best = torch.zeros_like(gaps)
    for fold, held_out in enumerate(fold_indices(len(labels), folds, seed)):
        train = _split(len(labels), held_out)
        chosen = auroc_matrix(activations[train], labels[train]).argsort(dim=1, descending=True)
        held = auroc_matrix(activations[held_out], labels[held_out])
        first = held.gather(1, chosen[:, :1])[:, 0]
        second = held.gather(1, chosen[:, 1:2])[:, 0]
        gaps[fold], best[fold] = first - second, first
    gap, best_auroc = gaps.nanmean(0), best.nanmean(0)
    captured = (best_auroc >= min_auroc) & (reduction <= max_entropy_reduction)
    return {
        "tad": float(gap[captured].sum()),
        "captured": [name for name, c in zip(names, captured.tolist(), strict=True) if c],
        "attributes": {
            name: {
                "best_auroc": float(best_auroc[i]),
                "gap": float(gap[i]),
                "entropy_reduction": float(reduction[i]),
                "captured": bool(captured[i]),
            }
            for i, name in enumerate(names)
        },
    }
