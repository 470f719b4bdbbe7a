"""Patch-to-prototype squared L2 distances: the min over patches with its index, and the full map.

The public functions are ``torch.library`` custom ops (``patronus::prototype_min_distance``,
``patronus::prototype_distance_map``) with fake kernels and autograd, so they work under
``torch.compile(fullgraph=True)`` and in CUDA graphs. Each call runs on the best backend for its
device (``patronus._backend``):

- ``triton``: fused kernels (``patronus.kernels.prototype_distance``) for CUDA tensors;
- ``cpp``: the extension's CPU kernels (batched GEMM with a fused min, deterministic backward);
- ``torch``: the ``*_ref`` pure-PyTorch references, also the test oracles.

Float64 inputs never use Triton (the oracle precision comes from ``cpp`` or ``torch``). The
references never broadcast to 5-D: distances come from one batched matrix product with the norms,
``||z - c||^2 - 2 (z - c).(p - c) + ||p - c||^2`` in float32 (float64 for float64 inputs),
clamped at 0, where c is the prototypes' mean: centring changes no distance but keeps a large
common offset of features and prototypes from cancelling the differences that pick the winner.
Every backend recomputes the winning distance as ``sum((z - p)^2)`` from the winning patch, so
near-zero distances, where the log activation is steepest, do not cancel. The gradient of a min
reaches the winning patch only; it is deterministic unless ``torch.use_deterministic_algorithms``
is off *and* the Triton backend runs (then an atomic scatter is used for the features' gradient).

Non-finite values, the same on every backend: a NaN in a patch (or a prototype) makes its
distances NaN, and a NaN distance wins the min, so NaN propagates. A patch holding +-Inf, or
whose distance overflows float32, is at distance +Inf: the min is the finite minimum wherever one
exists, and where every distance is +Inf it is +Inf at the smallest patch index (ties go to the
smallest index).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from patronus import _backend
from patronus.ops._validation import check_float, check_same_device, opmath_dtype

MIN_OP = "prototype_min_distance"
MAP_OP = "prototype_distance_map"


# ------------------------------------------------------------------------------------ checks
def as_patches(features: torch.Tensor) -> torch.Tensor:
    """View features as patches: (B, D, H, W) -> (B, H*W, D); (B, N, D) passes through.

    No copy for NCHW or channels_last input (the result is a strided view).
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
    if prototypes.shape[0] == 0:
        raise ValueError("there are no prototypes (P is 0)")


def _check_map_inputs(features: torch.Tensor, prototypes: torch.Tensor) -> None:
    _check_inputs(features, prototypes)
    if features.dim() != 4:
        raise ValueError(
            "prototype_distance_map needs spatial features (B, D, H, W), got "
            f"shape {tuple(features.shape)}"
        )


def _check_backward_inputs(
    grad: torch.Tensor, features: torch.Tensor, prototypes: torch.Tensor, index: torch.Tensor
) -> None:
    """The backward op is public: check what it indexes with (the kernels also mask any index
    out of range, so a CUDA graph capture, where this check is skipped, reads nothing out of
    bounds)."""
    batch, num_patches = as_patches(features).shape[:2]
    shape = (batch, prototypes.shape[0])
    if tuple(grad.shape) != shape or tuple(index.shape) != shape:
        raise ValueError(
            f"grad and index must be (B, P) = {shape}, got {tuple(grad.shape)} and "
            f"{tuple(index.shape)}"
        )
    if index.dtype != torch.int64:
        raise TypeError(f"index must be int64, got {index.dtype}")
    if index.numel() == 0 or (index.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= num_patches:
        bad = low if low < 0 else high
        raise IndexError(f"patch index {bad} is outside [0, {num_patches})")


# -------------------------------------------------------------------------------- references
def distance_matrix_ref(patches: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared distances of every patch to every prototype.

    patches (B, N, D), prototypes (P, D) -> (B, P, N) in float32 (float64 for float64 inputs),
    computed as ||z - c||^2 - 2 (z - c).(p - c) + ||p - c||^2 with c the prototypes' mean, clamped
    at 0; inf - inf (an infinite input) reads as +inf, NaN inputs give NaN.
    """
    dtype = opmath_dtype(patches, prototypes)
    center = prototypes.to(dtype).mean(0)
    z = patches.to(dtype) - center
    p = prototypes.to(dtype) - center
    patch_norms = z.square().sum(-1)[:, None, :]  # (B, 1, N)
    prototype_norms = p.square().sum(-1)[None, :, None]  # (1, P, 1)
    cross = torch.matmul(p, z.transpose(1, 2))  # (B, P, N)
    distances = patch_norms - 2.0 * cross + prototype_norms
    overflowed = distances.isnan() & ~patch_norms.isnan() & ~prototype_norms.isnan()
    return distances.masked_fill(overflowed, float("inf")).clamp_min(0.0)


def prototype_min_distance_ref(
    features: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference min distance over patches and its patch index, differentiable by autograd.

    features (B, D, H, W) or (B, N, D), prototypes (P, D) -> min_dist (B, P) float32 (float64 for
    float64 inputs), patch_index (B, P) int64 flat index into H*W; ties -> smallest index.
    """
    _check_inputs(features, prototypes)
    patches = as_patches(features)
    dtype = opmath_dtype(patches, prototypes)
    with torch.no_grad():
        # float64 products rounded to the opmath dtype: BLAS may round identical patches
        # differently in float32, float64 then rounding makes them equal, so ties resolve to the
        # smallest index as in the kernels
        distances = distance_matrix_ref(patches.double(), prototypes.double()).to(dtype)
        patch_index = distances.argmin(dim=2)  # (B, P)
    batch, _, dim = patches.shape
    gather_index = patch_index.unsqueeze(-1).expand(batch, prototypes.shape[0], dim)
    winners = patches.gather(1, gather_index).to(dtype)  # (B, P, D)
    min_dist = (winners - prototypes.to(dtype)).square().sum(-1)
    return min_dist, patch_index


def prototype_distance_map_ref(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Reference distance map: features (B, D, H, W), prototypes (P, D) -> (B, P, H, W)."""
    _check_map_inputs(features, prototypes)
    batch, _, height, width = features.shape
    distances = distance_matrix_ref(as_patches(features), prototypes)
    return distances.reshape(batch, prototypes.shape[0], height, width)


def _min_distance_backward_torch(
    grad: torch.Tensor, features: torch.Tensor, prototypes: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The min's gradient with torch ops: 2 g (z_win - p) scattered to the winning patches.
    Differentiable (double backward uses it directly); the op's torch backend copies the
    features' gradient into the features' layout, as its fake kernel says."""
    patches = as_patches(features)
    dtype = opmath_dtype(patches, prototypes)
    batch, num_patches, dim = patches.shape
    gather_index = index.unsqueeze(-1).expand(batch, prototypes.shape[0], dim)
    winners = patches.gather(1, gather_index).to(dtype)
    contribution = 2.0 * grad.to(dtype).unsqueeze(-1) * (winners - prototypes.to(dtype))
    zeros = contribution.new_zeros((batch, num_patches, dim))
    grad_patches = zeros.scatter_add(1, gather_index, contribution)
    if features.dim() == 4:
        grad_patches = grad_patches.transpose(1, 2).reshape(features.shape)
    return grad_patches.to(features.dtype), (-contribution.sum(0)).to(prototypes.dtype)


# --------------------------------------------------------------------------------- backends
def _triton_probe(device: torch.device) -> str | None:
    missing = _backend.triton_status()
    if missing is not None:
        return missing
    if device.type == "cuda":
        return None
    if os.environ.get(_backend.INTERPRET_VAR) == "1" and _backend.requested_backend() == "triton":
        return None  # the interpreter, forced: a test tool, never chosen automatically
    return "Triton kernels need CUDA tensors (on CPU only forced, under TRITON_INTERPRET=1)"


_CPP_PROBE = _backend.cpp_probe("prototype_min_distance_fwd")
MIN_BACKENDS = _backend.OpBackends(
    MIN_OP, {"triton": _triton_probe, "cpp": _CPP_PROBE, "torch": _backend.torch_probe}
)
MAP_BACKENDS = _backend.OpBackends(MAP_OP, {"triton": _triton_probe, "torch": _backend.torch_probe})


def _choose(backends: _backend.OpBackends, features: torch.Tensor, prototypes: torch.Tensor) -> str:
    """The backend's name; float64 never runs on Triton (the next backend serves it)."""
    name = backends.select(features.device).name
    if name == "triton" and opmath_dtype(features, prototypes) == torch.float64:
        name = (
            "cpp" if "cpp" in backends.probes and _CPP_PROBE(features.device) is None else "torch"
        )
    return name


def _triton_kernels() -> ModuleType:
    # imported by name: in a source checkout patronus.kernels points its __path__ at kernels/
    return importlib.import_module("patronus.kernels.prototype_distance")


# ---------------------------------------------------------------------------- custom op: min
@torch.library.custom_op("patronus::prototype_min_distance", mutates_args=())
def _min_distance_op(
    features: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    backend = _choose(MIN_BACKENDS, features, prototypes)
    if backend == "triton":
        return _triton_kernels().min_distance_forward(as_patches(features), prototypes)
    if backend == "cpp":
        return torch.ops.patronus.prototype_min_distance_fwd(features, prototypes)
    with torch.no_grad():
        return prototype_min_distance_ref(features, prototypes)


@_min_distance_op.register_fake
def _min_distance_fake(features, prototypes):
    shape = (features.shape[0], prototypes.shape[0])
    dtype = opmath_dtype(features, prototypes)
    return features.new_empty(shape, dtype=dtype), features.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("patronus::prototype_min_distance_backward", mutates_args=())
def _min_distance_backward_op(
    grad: torch.Tensor,
    features: torch.Tensor,
    prototypes: torch.Tensor,
    index: torch.Tensor,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_backward_inputs(grad, features, prototypes, index)
    backend = _choose(MIN_BACKENDS, features, prototypes)
    if backend == "triton":
        grad_features = torch.empty_like(features)
        grad_prototypes = _triton_kernels().min_distance_backward(
            grad, as_patches(features), prototypes, index, as_patches(grad_features), deterministic
        )
        return grad_features, grad_prototypes.to(prototypes.dtype)
    if backend == "cpp":
        return torch.ops.patronus.prototype_min_distance_bwd(grad, features, prototypes, index)
    grad_features, grad_prototypes = _min_distance_backward_torch(grad, features, prototypes, index)
    return torch.empty_like(features).copy_(grad_features), grad_prototypes


@_min_distance_backward_op.register_fake
def _min_distance_backward_fake(grad, features, prototypes, index, deterministic):
    return torch.empty_like(features), torch.empty_like(prototypes)


def _min_distance_setup(ctx, inputs, output) -> None:
    features, prototypes = inputs
    ctx.save_for_backward(features, prototypes, output[1])
    ctx.mark_non_differentiable(output[1])


def _min_distance_backward(ctx, grad_min, grad_index):
    features, prototypes, index = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
        return _min_distance_backward_torch(grad_min, features, prototypes, index)
    deterministic = torch.are_deterministic_algorithms_enabled() or not _atomic_allowed()
    grad_features, grad_prototypes = _min_distance_backward_op(
        grad_min, features, prototypes, index, deterministic
    )
    return grad_features, grad_prototypes


def _atomic_allowed() -> bool:
    """The atomic (non-reproducible) features' gradient only with PATRONUS_DETERMINISTIC=0."""
    return os.environ.get("PATRONUS_DETERMINISTIC", "1") == "0"


_min_distance_op.register_autograd(_min_distance_backward, setup_context=_min_distance_setup)


# ---------------------------------------------------------------------------- custom op: map
@torch.library.custom_op("patronus::prototype_distance_map", mutates_args=())
def _distance_map_op(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = features.shape
    if _choose(MAP_BACKENDS, features, prototypes) == "triton":
        distances = _triton_kernels().distance_map(as_patches(features), prototypes)
        return distances.reshape(batch, prototypes.shape[0], height, width)
    with torch.no_grad():
        return prototype_distance_map_ref(features, prototypes)


@_distance_map_op.register_fake
def _distance_map_fake(features, prototypes):
    batch, _, height, width = features.shape
    shape = (batch, prototypes.shape[0], height, width)
    return features.new_empty(shape, dtype=opmath_dtype(features, prototypes))


def _distance_map_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, output)


def _distance_map_backward(ctx, grad):
    """d = ||z||^2 - 2 z.p + ||p||^2 where positive (0 where clamped):
    dz_n = 2 (z_n sum_p g - sum_p g p), dp = 2 (p sum_{b,n} g - sum_{b,n} g z_n)."""
    features, prototypes, distances = ctx.saved_tensors
    dtype = distances.dtype
    g = (grad * (distances > 0)).to(dtype).flatten(2)  # (B, P, N)
    z = features.to(dtype).flatten(2)  # (B, D, N)
    p = prototypes.to(dtype)
    grad_z = 2.0 * (z * g.sum(1, keepdim=True) - torch.matmul(p.t(), g))
    grad_p = 2.0 * (p * g.sum((0, 2))[:, None] - torch.einsum("bpn,bdn->pd", g, z))
    return grad_z.reshape(features.shape).to(features.dtype), grad_p.to(prototypes.dtype)


_distance_map_op.register_autograd(_distance_map_backward, setup_context=_distance_map_setup)


# -------------------------------------------------------------------------------- public API
def prototype_min_distance(
    features: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min squared L2 distance of each prototype to any patch, and the winning patch.

    Args:
        features: (B, D, H, W) in NCHW or channels_last, or (B, N, D) patches; fp16/bf16/fp32/fp64.
        prototypes: (P, D), same device; may differ in dtype (e.g. fp32 under bf16 autocast).

    Returns:
        min_dist: (B, P), float32 (float64 for float64 inputs), differentiable in both inputs.
        patch_index: (B, P) int64 flat index into H*W (or N); ties -> smallest index.
    """
    _check_inputs(features, prototypes)
    return torch.ops.patronus.prototype_min_distance(features, prototypes)


def prototype_distance_map(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every patch to every prototype, for "where" figures.

    Args:
        features: (B, D, H, W); prototypes: (P, D).

    Returns:
        (B, P, H, W), float32 (float64 for float64 inputs), clamped at 0, differentiable.
    """
    _check_map_inputs(features, prototypes)
    return torch.ops.patronus.prototype_distance_map(features, prototypes)
