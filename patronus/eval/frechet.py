"""Fréchet distance and kernel inception distance between two sets of features (float64)."""

from __future__ import annotations

import math

import torch

from patronus.eval._inputs import check_features, check_finite


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, F) -> mean (F,) and unbiased covariance (F, F), float64 (as pytorch-fid)."""
    check_features("features", features)
    if features.shape[0] < 2:
        raise ValueError(f"need (N, F) features with N >= 2, got {tuple(features.shape)}")
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.t() @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.t()) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.t()


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64.

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric sigma1^(1/2) sigma2 sigma1^(1/2), which has the same spectrum: no complex parts.
    """
    dim = mu1.shape[-1]
    for name, value, shape in [
        ("mu1", mu1, (dim,)), ("sigma1", sigma1, (dim, dim)),
        ("mu2", mu2, (dim,)), ("sigma2", sigma2, (dim, dim)),
    ]:  # fmt: skip
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must be {shape} like mu1 (both sets' statistics from the same "
                f"features), got {tuple(value.shape)}"
            )
        check_finite(name, value)
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root = _psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.t()) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(value)


def kernel_distance(
    features1: torch.Tensor,
    features2: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with the kernel (x.y / F + 1)^3, averaged over random subsets.

    Returns (mean, standard deviation over subsets). When both sets are no larger than
    ``subset_size`` every subset is the whole of both, so there is one value and no spread: the
    standard deviation is NaN then (null in JSON), not a misleading 0.
    """
    check_features("features1", features1)
    check_features("features2", features2, features1.shape[1])
    x, y = features1.double(), features2.double()
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 features per set")
    if size == x.shape[0] == y.shape[0]:
        subsets = 1  # every subset would be both sets whole (the estimate is order-free)
    dim = x.shape[1]
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(x.shape[0], generator=generator)[:size]]
        b = y[torch.randperm(y.shape[0], generator=generator)[:size]]
        k_aa = (a @ a.t() / dim + 1) ** 3
        k_bb = (b @ b.t() / dim + 1) ** 3
        k_ab = (a @ b.t() / dim + 1) ** 3
        off_diagonal = (k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (size * (size - 1))
        values.append(float(off_diagonal - 2 * k_ab.mean()))
    result = torch.tensor(values, dtype=torch.float64)
    return float(result.mean()), float(result.std()) if subsets > 1 else math.nan
