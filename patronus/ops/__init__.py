"""Ops with backend dispatch (triton | cpp | torch) and their pure-PyTorch references.

Every op follows one anatomy (CONTRIBUTING.md, "Adding an op"): a ``torch.library`` custom op
``patronus::<op>`` with a fake kernel and an autograd formula (or an explicit "not
differentiable"), backends chosen per call by ``patronus._backend``, and a ``*_ref`` reference.
"""

from __future__ import annotations

import torch

from patronus import _backend
from patronus.ops import noising, prototype_distance, scheduler
from patronus.ops.noising import q_sample, q_sample_ref
from patronus.ops.prototype_distance import (
    prototype_distance_map,
    prototype_distance_map_ref,
    prototype_min_distance,
    prototype_min_distance_ref,
)
from patronus.ops.scheduler import philox_normal, scheduler_step, scheduler_step_ref

_OPS = (
    prototype_distance.MIN_BACKENDS,
    prototype_distance.MAP_BACKENDS,
    scheduler.BACKENDS,
    noising.BACKENDS,
)


def backend_choices(device: torch.device) -> dict[str, _backend.BackendChoice]:
    """The backend every op would use on ``device``, with the reason."""
    return {backends.op: backends.select(device) for backends in _OPS}


__all__ = [
    "backend_choices",
    "philox_normal",
    "prototype_distance_map",
    "prototype_distance_map_ref",
    "prototype_min_distance",
    "prototype_min_distance_ref",
    "q_sample",
    "q_sample_ref",
    "scheduler_step",
    "scheduler_step_ref",
]
