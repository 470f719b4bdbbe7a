"""Input checks of the evaluation functions: errors that name the argument and what was expected
(these functions run on the host, so reading values costs nothing extra)."""

from __future__ import annotations

import torch


def check_finite(name: str, tensor: torch.Tensor) -> None:
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} contain NaN or Inf ({bad} of {tensor.numel()} values)")


def check_features(name: str, features: torch.Tensor, dim: int | None = None) -> None:
    """``features`` must be finite (N, F), with F == ``dim`` when given."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"{name} must be (N, F) features, got {shape}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(
            f"{name} have {features.shape[1]} features per sample, the other set {dim}: "
            "extract both with the same feature extractor"
        )
    check_finite(name, features)


def check_binary_labels(labels: torch.Tensor, count: int) -> torch.Tensor:
    """(N,) labels of values 0 / 1 (any dtype; bool too) for ``count`` samples -> bool (N,)."""
    if labels.dim() != 1 or labels.shape[0] != count:
        raise ValueError(f"labels must be ({count},), one per score, got {tuple(labels.shape)}")
    values = labels.unique()
    if not bool(((values == 0) | (values == 1)).all()):
        shown = ", ".join(f"{float(v):g}" for v in values[:5])
        raise ValueError(
            f"labels must be binary (0 / 1 or bool), got values {shown}"
            f"{' ...' if len(values) > 5 else ''}; for a class k pass (labels == k)"
        )
    return labels.bool()
