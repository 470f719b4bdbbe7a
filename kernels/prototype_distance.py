"""Triton kernels: patch-to-prototype squared distances, min-pooled, and their gradients.

Features arrive as a (B, N, D) strided view (NCHW, channels_last or patch-major: no copy);
prototypes as (P, D). Distances are ``||z - c||^2 - 2 (z - c).(p - c) + ||p - c||^2`` (c the
prototypes' mean for float32 features, 0 for half ones: features are centred as they are loaded,
so a large common offset does not cancel) from a tiled matrix product accumulated in float32
(half inputs multiply in their own precision on tensor cores), with an online min/argmin over
the patch tiles: the (B, P, N) tensor is never written. The winning distance is then
recomputed as ``sum((z - p)^2)`` in float32 from the winning patch. Float32 products are exact
(IEEE) unless torch allows TF32 for float32 matrix products
(``torch.set_float32_matmul_precision("high")`` or ``torch.backends.cuda.matmul.fp32_precision =
"tf32"``): then they run on tensor cores in TF32, which may pick a patch whose distance is within
TF32 rounding of the true minimum (the distance returned is still that patch's, recomputed in
float32), and the distance map carries TF32 rounding. A NaN distance wins the min
(so NaN inputs propagate, as in the reference); inf - inf from an infinite input reads as +inf;
ties go to the smallest index. The backward kernels mask any patch index outside [0, N) (it
contributes nothing, nothing is read).

Under ``TRITON_INTERPRET=1`` (CPU tests) the kernels run with one large-block configuration and
multiply in float32 without tl.dot (the interpreter multiplies bf16 bit patterns, and its BLAS
rounds identical rows differently); on a GPU they are autotuned and use tensor cores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# one configuration under the interpreter: large blocks, small grids
INTERPRETER_META = {"BLOCK_N": 128, "BLOCK_P": 32, "BLOCK_D": 128}


def _autotune(configs: list[triton.Config], key: list[str]):
    """Autotune on a GPU; under the interpreter (which cannot benchmark) use one config."""

    def wrap(kernel):
        return kernel if INTERPRET else triton.autotune(configs=configs, key=key)(kernel)

    return wrap


_forced_meta: dict[str, int] | None = None  # set by forced_config


@contextlib.contextmanager
def forced_config(config: triton.Config) -> Iterator[None]:
    """Launch every kernel of this module with ``config`` instead of autotuning (or the
    interpreter's blocks), so that tests can check each configuration the autotuner may pick."""
    global _forced_meta
    previous = _forced_meta
    _forced_meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    try:
        yield
    finally:
        _forced_meta = previous


def _meta() -> dict[str, int]:
    if _forced_meta is not None:
        return dict(_forced_meta)
    return dict(INTERPRETER_META) if INTERPRET else {}


def _kernel(kernel):
    """The kernel to launch: without its autotuner while a configuration is forced."""
    return kernel.fn if _forced_meta is not None and isinstance(kernel, Autotuner) else kernel


def _configs(rows: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    """Autotune configurations from rows (BLOCK_N, BLOCK_P, BLOCK_D, num_warps, num_stages)."""
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_P": bp, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bp, bd, w, s in rows
    ]


_FORWARD_CONFIGS = _configs(
    [
        (128, 64, 64, 4, 3),
        (128, 128, 64, 8, 3),
        (64, 64, 64, 4, 4),
        (128, 32, 128, 4, 3),
        (64, 128, 32, 4, 4),
        (256, 64, 32, 8, 3),
    ]
)
_BACKWARD_CONFIGS = _configs(
    [(64, 64, 64, 4, 3), (128, 64, 64, 8, 3), (64, 32, 128, 4, 3), (128, 32, 64, 4, 3)]
)


@triton.jit
def _dot_accumulate(z, p, acc, DOT_DTYPE: tl.constexpr):
    """acc + z @ p: half operands on tensor cores, float32 operands in full (IEEE) precision or,
    DOT_DTYPE "tf32", in TF32 on tensor cores.

    DOT_DTYPE "exact" (the interpreter) multiplies elementwise and sums: the interpreter's tl.dot
    is numpy's BLAS, which rounds identical rows differently and so breaks exact ties.
    """
    if DOT_DTYPE == "exact":
        acc += tl.sum(z.to(tl.float32)[:, :, None] * p.to(tl.float32)[None, :, :], axis=1)
    elif DOT_DTYPE == "bf16":
        acc = tl.dot(z.to(tl.bfloat16), p.to(tl.bfloat16), acc)
    elif DOT_DTYPE == "fp16":
        acc = tl.dot(z.to(tl.float16), p.to(tl.float16), acc)
    elif DOT_DTYPE == "tf32":
        acc = tl.dot(z.to(tl.float32), p.to(tl.float32), acc, input_precision="tf32")
    else:
        acc = tl.dot(z.to(tl.float32), p.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def _distance_tile(
    z_base, CENTRED, CENTER, offs_n, offs_p, mask_n, mask_p,
    D, stride_zn, stride_zd,
    DOT_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """((z - c).(p - c) for a patch x prototype tile, ||z - c||^2 of its patches), accumulated
    over channels. CENTRED: the centred prototypes p - c, (P, D) float32 contiguous."""
    cross = tl.zeros([BLOCK_N, BLOCK_P], tl.float32)
    patch_norm = tl.zeros([BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        mask_z = mask_n[:, None] & mask_d[None, :]
        z = tl.load(
            z_base + offs_n[:, None] * stride_zn + offs_d[None, :] * stride_zd,
            mask=mask_z,
            other=0.0,
        )
        center = tl.load(CENTER + offs_d, mask=mask_d, other=0.0)
        p = tl.load(
            CENTRED + offs_p[None, :] * D + offs_d[:, None],
            mask=mask_p[None, :] & mask_d[:, None],
            other=0.0,
        )
        z32 = tl.where(mask_z, z.to(tl.float32) - center[None, :], 0.0)
        patch_norm += tl.sum(z32 * z32, axis=1)
        cross = _dot_accumulate(z32.to(z.dtype), p, cross, DOT_DTYPE)
    return cross, patch_norm


@triton.jit
def _expanded_distance(patch_norm, cross, proto_norm):
    """(BLOCK_N, BLOCK_P) distances; inf - inf (an infinite input) reads as +inf."""
    dist = patch_norm[:, None] - 2.0 * cross + proto_norm[None, :]
    finite_inputs = (patch_norm == patch_norm)[:, None] & (proto_norm == proto_norm)[None, :]
    return tl.where((dist != dist) & finite_inputs, float("inf"), dist)


@_autotune(_FORWARD_CONFIGS, key=["N", "D", "NUM_P", "DOT_DTYPE"])
@triton.jit
def _min_distance_fwd_kernel(
    Z, PROTO, CENTRED, CENTER, PROTO_NORM, OUT_DIST, OUT_INDEX,
    N, D, NUM_P,
    stride_zb, stride_zn, stride_zd,
    stride_pp, stride_pd,
    DOT_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < NUM_P
    proto_norm = tl.load(PROTO_NORM + offs_p, mask=mask_p, other=0.0)
    best = tl.full([BLOCK_P], float("inf"), tl.float32)
    best_index = tl.zeros([BLOCK_P], tl.int32)
    z_base = Z + b * stride_zb
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        cross, patch_norm = _distance_tile(
            z_base, CENTRED, CENTER, offs_n, offs_p, mask_n, mask_p,
            D, stride_zn, stride_zd,
            DOT_DTYPE, BLOCK_N, BLOCK_P, BLOCK_D,
        )  # fmt: skip
        dist = _expanded_distance(patch_norm, cross, proto_norm)
        dist = tl.where(dist != dist, float("-inf"), dist)  # NaN wins the min
        dist = tl.where(mask_n[:, None], dist, float("inf"))
        tile_best = tl.min(dist, axis=0)
        tile_index = tl.argmin(dist, axis=0, tie_break_left=True) + n0
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index, best_index)
    # recompute the winning distance exactly from the winning patch
    exact = tl.zeros([BLOCK_P], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_p[:, None] & (offs_d[None, :] < D)
        winner = tl.load(
            z_base + best_index[:, None] * stride_zn + offs_d[None, :] * stride_zd,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        p = tl.load(
            PROTO + offs_p[:, None] * stride_pp + offs_d[None, :] * stride_pd, mask=mask, other=0.0
        ).to(tl.float32)
        diff = winner - p
        exact += tl.sum(diff * diff, axis=1)
    tl.store(OUT_DIST + b * NUM_P + offs_p, exact, mask=mask_p)
    tl.store(OUT_INDEX + b * NUM_P + offs_p, best_index.to(tl.int64), mask=mask_p)


@_autotune(_BACKWARD_CONFIGS, key=["N", "D", "NUM_P"])
@triton.jit
def _grad_features_kernel(
    Z, PROTO, GRAD, INDEX, OUT,
    N, D, NUM_P,
    stride_zb, stride_zn, stride_zd,
    stride_pp, stride_pd,
    stride_ob, stride_on, stride_od,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Deterministic: each program owns a (patch, channel) tile and sums over prototypes in order:
    grad_z[n] = 2 (z_n sum_{p: idx_p = n} g_p - sum_{p: idx_p = n} g_p p_p)."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid_d = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    weighted = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    weight = tl.zeros([BLOCK_N], tl.float32)
    for p0 in range(0, NUM_P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < NUM_P
        index = tl.load(INDEX + b * NUM_P + offs_p, mask=mask_p, other=-1)
        grad = tl.load(GRAD + b * NUM_P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        # an index outside [0, N) matches no patch: it contributes nothing
        selection = tl.where(offs_n[:, None] == index[None, :], grad[None, :], 0.0)
        p = tl.load(
            PROTO + offs_p[:, None] * stride_pp + offs_d[None, :] * stride_pd,
            mask=mask_p[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)
        weighted = tl.dot(selection, p, weighted, input_precision="ieee")
        weight += tl.sum(selection, axis=1)
    mask = mask_n[:, None] & mask_d[None, :]
    z = tl.load(
        Z + b * stride_zb + offs_n[:, None] * stride_zn + offs_d[None, :] * stride_zd,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    out = 2.0 * (z * weight[:, None] - weighted)
    tl.store(
        OUT + b * stride_ob + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od,
        out.to(OUT.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _grad_features_atomic_kernel(
    Z, PROTO, GRAD, INDEX, OUT32,
    N, D, NUM_P,
    stride_zb, stride_zn, stride_zd,
    stride_pp, stride_pd,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Scatter 2 g (z_win - p) into a float32 (B, N, D) buffer with atomics (fast, not
    bit-reproducible when prototypes share a winning patch)."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    index = tl.load(INDEX + b * NUM_P + offs_p, mask=offs_p < NUM_P, other=0)
    mask_p = (offs_p < NUM_P) & (index >= 0) & (index < N)
    grad = tl.load(GRAD + b * NUM_P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = mask_p[:, None] & (offs_d[None, :] < D)
        winner = tl.load(
            Z + b * stride_zb + index[:, None] * stride_zn + offs_d[None, :] * stride_zd,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        p = tl.load(
            PROTO + offs_p[:, None] * stride_pp + offs_d[None, :] * stride_pd, mask=mask, other=0.0
        ).to(tl.float32)
        contribution = 2.0 * grad[:, None] * (winner - p)
        target = OUT32 + (b * N + index[:, None]) * D + offs_d[None, :]
        tl.atomic_add(target, contribution, mask=mask)


@_autotune(_BACKWARD_CONFIGS, key=["D", "NUM_P", "BATCH"])
@triton.jit
def _grad_prototypes_kernel(
    Z, PROTO, GRAD, INDEX, OUT,
    BATCH, N, D, NUM_P,
    stride_zb, stride_zn, stride_zd,
    stride_pp, stride_pd,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """grad_p = -2 sum_b g_bp (z_win(b, p) - p), summed over the batch in order (deterministic)."""
    pid_p = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_p = offs_p < NUM_P
    mask = mask_p[:, None] & (offs_d[None, :] < D)
    p = tl.load(
        PROTO + offs_p[:, None] * stride_pp + offs_d[None, :] * stride_pd, mask=mask, other=0.0
    ).to(tl.float32)
    acc = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    for b in range(0, BATCH):
        index = tl.load(INDEX + b * NUM_P + offs_p, mask=mask_p, other=0)
        valid = mask_p & (index >= 0) & (index < N)
        grad = tl.load(GRAD + b * NUM_P + offs_p, mask=valid, other=0.0).to(tl.float32)
        winner = tl.load(
            Z + b * stride_zb + index[:, None] * stride_zn + offs_d[None, :] * stride_zd,
            mask=mask & valid[:, None],
            other=0.0,
        ).to(tl.float32)
        acc -= 2.0 * grad[:, None] * tl.where(valid[:, None], winner - p, 0.0)
    tl.store(OUT + offs_p[:, None] * D + offs_d[None, :], acc, mask=mask)


@_autotune(_FORWARD_CONFIGS, key=["N", "D", "NUM_P", "DOT_DTYPE"])
@triton.jit
def _distance_map_kernel(
    Z, CENTRED, CENTER, PROTO_NORM, OUT,
    N, D, NUM_P,
    stride_zb, stride_zn, stride_zd,
    DOT_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The full (B, P, N) map, one (patch, prototype) tile per program, clamped at 0."""
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_n = offs_n < N
    mask_p = offs_p < NUM_P
    cross, patch_norm = _distance_tile(
        Z + b * stride_zb, CENTRED, CENTER, offs_n, offs_p, mask_n, mask_p,
        D, stride_zn, stride_zd,
        DOT_DTYPE, BLOCK_N, BLOCK_P, BLOCK_D,
    )  # fmt: skip
    proto_norm = tl.load(PROTO_NORM + offs_p, mask=mask_p, other=0.0)
    dist = _expanded_distance(patch_norm, cross, proto_norm)
    dist = tl.where(dist < 0.0, 0.0, dist)  # clamp at 0, keeping NaN
    target = OUT + b * NUM_P * N + offs_p[None, :] * N + offs_n[:, None]
    tl.store(target, dist, mask=mask_n[:, None] & mask_p[None, :])


# ------------------------------------------------------------------------------------ launchers
def tf32_allowed() -> bool:
    """Whether torch allows TF32 in float32 matrix products on CUDA, read through the API that
    torch >= 2.9 keeps consistent whichever of its two APIs set it."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is not None:
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def _dot_dtype(patches: torch.Tensor) -> str:
    if INTERPRET:
        return "exact"
    if patches.dtype == torch.float32:
        return "tf32" if tf32_allowed() else "fp32"
    if patches.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"the Triton kernels take float32, float16 or bfloat16: {patches.dtype}")
    return "bf16" if patches.dtype == torch.bfloat16 else "fp16"


def _centred(
    patches: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p - c (P, D) float32 contiguous, c (D,), ||p - c||^2 (P,)) with c the prototypes' mean
    for float32 features. Half-precision features are not centred (c = 0): their products are
    exact in float32 on tensor cores, centred values would be rounded to half precision, and a
    half-precision feature cannot hold small differences on a large offset anyway."""
    p = prototypes.float()
    center = p.mean(0) if patches.dtype == torch.float32 else torch.zeros_like(p[0])
    centred = (p - center).contiguous()
    return centred, center, centred.square().sum(1)


def min_distance_forward(
    patches: torch.Tensor, prototypes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """patches (B, N, D) any strides, prototypes (P, D) -> (min_dist (B, P) fp32, index int64)."""
    batch, num_patches, dim = patches.shape
    num_prototypes = prototypes.shape[0]
    min_dist = torch.empty((batch, num_prototypes), device=patches.device, dtype=torch.float32)
    index = torch.empty((batch, num_prototypes), device=patches.device, dtype=torch.int64)
    if batch == 0:
        return min_dist, index
    centred, center, proto_norm = _centred(patches, prototypes)

    def grid(meta):
        return (triton.cdiv(num_prototypes, meta["BLOCK_P"]), batch)

    _kernel(_min_distance_fwd_kernel)[grid](
        patches, prototypes, centred, center, proto_norm, min_dist, index,
        num_patches, dim, num_prototypes,
        *patches.stride(), *prototypes.stride(),
        DOT_DTYPE=_dot_dtype(patches), **_meta(),
    )  # fmt: skip
    return min_dist, index


def min_distance_backward(
    grad: torch.Tensor,
    patches: torch.Tensor,
    prototypes: torch.Tensor,
    index: torch.Tensor,
    grad_patches: torch.Tensor,
    deterministic: bool = True,
) -> torch.Tensor:
    """Write the features' gradient into ``grad_patches`` (B, N, D) (any strides, the features'
    dtype); return the prototypes' gradient (P, D) float32."""
    batch, num_patches, dim = patches.shape
    num_prototypes = prototypes.shape[0]
    grad = grad.contiguous()
    index = index.contiguous()
    grad_prototypes = torch.zeros((num_prototypes, dim), device=patches.device, dtype=torch.float32)
    if batch == 0:
        grad_patches.zero_()
        return grad_prototypes
    if deterministic:

        def features_grid(meta):
            return (
                triton.cdiv(num_patches, meta["BLOCK_N"]),
                batch,
                triton.cdiv(dim, meta["BLOCK_D"]),
            )

        _kernel(_grad_features_kernel)[features_grid](
            patches, prototypes, grad, index, grad_patches,
            num_patches, dim, num_prototypes,
            *patches.stride(), *prototypes.stride(), *grad_patches.stride(),
            **_meta(),
        )  # fmt: skip
    else:
        buffer = torch.zeros((batch, num_patches, dim), device=patches.device, dtype=torch.float32)
        block_p = INTERPRETER_META["BLOCK_P"]
        _grad_features_atomic_kernel[(triton.cdiv(num_prototypes, block_p), batch)](
            patches, prototypes, grad, index, buffer,
            num_patches, dim, num_prototypes,
            *patches.stride(), *prototypes.stride(),
            BLOCK_P=block_p, BLOCK_D=64 if not INTERPRET else INTERPRETER_META["BLOCK_D"],
        )  # fmt: skip
        grad_patches.copy_(buffer)

    def prototypes_grid(meta):
        return (triton.cdiv(num_prototypes, meta["BLOCK_P"]), triton.cdiv(dim, meta["BLOCK_D"]))

    _kernel(_grad_prototypes_kernel)[prototypes_grid](
        patches, prototypes, grad, index, grad_prototypes,
        batch, num_patches, dim, num_prototypes,
        *patches.stride(), *prototypes.stride(),
        **_meta(),
    )  # fmt: skip
    return grad_prototypes


def distance_map(patches: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """patches (B, N, D), prototypes (P, D) -> squared distances (B, P, N) float32, clamped at 0."""
    batch, num_patches, dim = patches.shape
    num_prototypes = prototypes.shape[0]
    out = torch.empty(
        (batch, num_prototypes, num_patches), device=patches.device, dtype=torch.float32
    )
    if batch == 0:
        return out
    centred, center, proto_norm = _centred(patches, prototypes)

    def grid(meta):
        return (
            triton.cdiv(num_patches, meta["BLOCK_N"]),
            triton.cdiv(num_prototypes, meta["BLOCK_P"]),
            batch,
        )

    _kernel(_distance_map_kernel)[grid](
        patches, centred, center, proto_norm, out,
        num_patches, dim, num_prototypes,
        *patches.stride(),
        DOT_DTYPE=_dot_dtype(patches), **_meta(),
    )  # fmt: skip
    return out
