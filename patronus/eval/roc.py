"""ROC-AUC without scikit-learn, and the AUROC of every (factor, prototype) pair."""

from __future__ import annotations

import torch

from patronus.eval._inputs import check_binary_labels, check_finite


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` (N, ...) for binary ``labels`` (N,), per column.

    The Mann-Whitney statistic with average ranks for ties; NaN where a class is empty.
    Scores must be finite, labels 0 / 1 (any dtype), one per score.
    """
    if scores.dim() == 0:
        raise ValueError("scores must be (N, ...), one row per label, got a scalar")
    labels = check_binary_labels(labels, scores.shape[0])
    check_finite("scores", scores)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    flat = scores.reshape(scores.shape[0], -1).double()
    if positives == 0 or negatives == 0:
        return torch.full(flat.shape[1:], float("nan"), dtype=torch.float64).reshape(
            scores.shape[1:]
        )
    order = flat.argsort(dim=0)
    ranks = torch.empty_like(flat)
    ranks.scatter_(
        0, order, torch.arange(1, flat.shape[0] + 1, dtype=torch.float64)[:, None].expand_as(flat)
    )
    # average the ranks of tied scores
    for column in range(flat.shape[1]):
        values, inverse = torch.unique(flat[:, column], return_inverse=True)
        if len(values) < flat.shape[0]:
            sums = torch.zeros(len(values), dtype=torch.float64).index_add_(
                0, inverse, ranks[:, column]
            )
            counts = torch.bincount(inverse, minlength=len(values)).double()
            ranks[:, column] = (sums / counts)[inverse]
    rank_sum = ranks[labels].sum(0)
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return auc.reshape(scores.shape[1:])


def factor_auroc(activations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, P) activations, (N,) binary labels -> (P,) max(AUC(y, s_j), AUC(y, -s_j))."""
    auc = roc_auc(activations, labels)
    return torch.maximum(auc, 1 - auc)
