"""Deterministic stand-in weights for the FID Inception-v3, the same on every machine and torch.

The real weights (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, 91 MB) are never
downloaded here, so our network is compared with pytorch-fid's own on these instead: every tensor
comes from numpy's PCG64 stream seeded by the crc32 of its name, so the reference script
(``tests/fixtures/make_fid_inception_features.py``, run beside pytorch-fid and torchvision) and the
test (beside neither) build the same state dict from the names and shapes alone.

The batch-norm statistics are small (running variance 0.005-0.02) and the convolutions scaled to
match, so activations keep their size through the 94 layers while the batch norms' epsilon
(0.001 in Inception-v3) changes every layer's output by 2-10%: a network with another epsilon,
pool or branch order cannot match the reference features (epsilon 1e-5 moves them by up to 18,
average pools that count the padding by up to 0.36, where float32 rounding gives 2e-6).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

VARIANCE = (0.005, 0.02)


def _tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) * np.sqrt(np.mean(VARIANCE))
    if name.endswith("bn.running_var"):
        return rng.uniform(*VARIANCE, size=shape)
    if name.endswith("bn.weight"):
        return rng.uniform(0.8, 1.2, size=shape)
    if name.endswith(("bn.bias", "bn.running_mean")):
        return rng.standard_normal(shape) * 0.01
    return rng.standard_normal(shape) * 0.01  # the unused 1008-class head


def fid_inception_weights(
    shapes: dict[str, tuple[int, ...] | list[int]],
) -> dict[str, torch.Tensor]:
    """Parameter and buffer name -> shape  ->  name -> float32 tensor (int64 0 for the batch
    norms' ``num_batches_tracked``)."""
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            weights[name] = torch.zeros(shape, dtype=torch.long)
        else:
            weights[name] = torch.from_numpy(_tensor(name, tuple(shape)).astype(np.float32))
    return weights
