"""Patch-to-prototype squared L2 distances: the min over patches with its index, and the full map.

The public functions route to the best available backend (``patronus._backend``); the ``*_ref``
functions are the pure-PyTorch reference implementations, used on CPU and as the test oracle.

The reference never broadcasts to 5-D: distances come from one batched matrix product with the
norms, ``||z||^2 - 2 z.p + ||p||^2`` in float32 (float64 for float64 inputs), clamped at 0. The
winning distance is then recomputed as ``sum((z - p)^2)`` from the winning patch, so that
near-zero distances, where the log activation is steepest, do not cancel; it is also the only
place gradients flow (the gradient of a min reaches the winning patch only).
"""

from __future__ import annotations

import torch

from patronus import _backend
from patronus.ops._validation import check_float, check_same_device, opmath_dtype

_PROBES = {"torch": _backend.torch_probe}


def as_patches(features: torch.Tensor) -> torch.Tensor:
    """View features as patches: (B, D, H, W) -> (B, H*W, D); (B, N, D) passes through.

    No copy for contiguous NCHW or channels_last input (the result is a strided view).
    """
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    raise ValueError(
        f"features must be (B, D, H, W) or (B, N, D) patches, got shape {tuple(features.shape)}"
    )


def _check_inputs(features: torch.Tensor, prototypes: torch.Tensor) -> None:
    check_float("features", features)
    check_float("prototypes", prototypes)
    check_same_device(features=features, prototypes=prototypes)
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must be (P, D), got shape {tuple(prototypes.shape)}")
    patches = as_patches(features)
    if patches.shape[2] != prototypes.shape[1]:
        raise ValueError(
            f"feature dimension D={patches.shape[2]} (dim 1 of (B, D, H, W), or dim 2 of "
            f"(B, N, D)) does not match prototypes of dimension {prototypes.shape[1]}"
        )
    if patches.shape[1] == 0:
        raise ValueError("features have no patches (H*W or N is 0); the min is undefined")


def distance_matrix_ref(patches: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared distances of every patch to every prototype.

    patches (B, N, D), prototypes (P, D) -> (B, P, N) in float32 (float64 for float64 inputs),
    computed as ||z||^2 - 2 z.p + ||p||^2 and clamped at 0.
    """
    dtype = opmath_dtype(patches, prototypes)
    z = patches.to(dtype)
    p = prototypes.to(dtype)
    patch_norms = z.square().sum(-1)  # (B, N)
    prototype_norms = p.square().sum(-1)  # (P,)
    cross = torch.matmul(p, z.transpose(1, 2))  # (B, P, N)
    distances = patch_norms[:, None, :] - 2.0 * cross + prototype_norms[None, :, None]
    return distances.clamp_min(0.0)


def prototype_min_distance_ref(
    features: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference min distance over patches and its patch index.

    features (B, D, H, W) or (B, N, D), prototypes (P, D) -> min_dist (B, P) float32 (float64 for
    float64 inputs), patch_index (B, P) int64 flat index into H*W; ties -> smallest index.
    """
    _check_inputs(features, prototypes)
    patches = as_patches(features)
    with torch.no_grad():
        patch_index = distance_matrix_ref(patches, prototypes).argmin(dim=2)  # (B, P)
    dtype = opmath_dtype(patches, prototypes)
    batch, _, dim = patches.shape
    gather_index = patch_index.unsqueeze(-1).expand(batch, prototypes.shape[0], dim)
    winners = patches.gather(1, gather_index).to(dtype)  # (B, P, D)
    min_dist = (winners - prototypes.to(dtype)).square().sum(-1)
    return min_dist, patch_index


def prototype_distance_map_ref(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Reference distance map: features (B, D, H, W), prototypes (P, D) -> (B, P, H, W)."""
    _check_inputs(features, prototypes)
    if features.dim() != 4:
        raise ValueError(
            "prototype_distance_map needs spatial features (B, D, H, W), got "
            f"shape {tuple(features.shape)}"
        )
    batch, _, height, width = features.shape
    distances = distance_matrix_ref(as_patches(features), prototypes)
    return distances.reshape(batch, prototypes.shape[0], height, width)


def prototype_min_distance(
    features: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min squared L2 distance of each prototype to any patch, and the winning patch.

    Args:
        features: (B, D, H, W) in NCHW or channels_last, or (B, N, D) patches; fp16/bf16/fp32/fp64.
        prototypes: (P, D), same device.

    Returns:
        min_dist: (B, P), float32 (float64 for float64 inputs), differentiable in both inputs.
        patch_index: (B, P) int64 flat index into H*W (or N); ties -> smallest index.
    """
    _backend.select("prototype_min_distance", features.device, _PROBES)
    return prototype_min_distance_ref(features, prototypes)


def prototype_distance_map(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every patch to every prototype, for "where" figures.

    Args:
        features: (B, D, H, W); prototypes: (P, D).

    Returns:
        (B, P, H, W), float32 (float64 for float64 inputs), clamped at 0.
    """
    _backend.select("prototype_distance_map", features.device, _PROBES)
    return prototype_distance_map_ref(features, prototypes)


def backend_choices(device: torch.device) -> dict[str, _backend.BackendChoice]:
    """The backend each prototype op would use on ``device`` (for ``patronus.info``)."""
    return {
        op: _backend.select(op, device, _PROBES)
        for op in ("prototype_min_distance", "prototype_distance_map")
    }
