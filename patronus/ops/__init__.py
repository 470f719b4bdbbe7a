"""Ops with backend dispatch (triton | cpp | torch) and their pure-PyTorch references."""

from patronus.ops.noising import q_sample, q_sample_ref
from patronus.ops.prototype_distance import (
    prototype_distance_map,
    prototype_distance_map_ref,
    prototype_min_distance,
    prototype_min_distance_ref,
)
from patronus.ops.scheduler import philox_normal, scheduler_step, scheduler_step_ref

__all__ = [
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
