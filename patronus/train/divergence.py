"""Stopping a training whose weights became NaN or Inf, before anything of it is saved.

Checked when the trainer is about to log, checkpoint or sample (every process at the same
steps, so that a DDP run stops everywhere), not after every step: it reads every weight.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from patronus.errors import PatronusError


class TrainingDiverged(PatronusError, RuntimeError):
    """The weights hold NaN or Inf: training cannot recover, and nothing more is saved."""


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding any NaN or Inf."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def check_weights(
    model: nn.Module,
    step: int,
    last_checkpoint: Callable[[], Path | None],
    learning_rate: float,
) -> None:
    """Raise :class:`TrainingDiverged` naming the first broken weights, the checkpoint that is
    kept (``last_checkpoint()``, asked only then; None: none yet) and what to change."""
    broken = non_finite_parameters(model)
    if not broken:
        return
    kept_folder = last_checkpoint()
    kept = (
        f"the last checkpoint, {kept_folder}, is kept (resume it with --resume)"
        if kept_folder is not None
        else "no checkpoint was saved yet"
    )
    raise TrainingDiverged(
        f"training diverged: by step {step}, {len(broken)} weight tensors hold NaN or Inf "
        f"(first {broken[0]}); nothing of it is saved, {kept}. Lower the learning rate (--lr, "
        f"now {learning_rate:g}), keep gradient clipping on (--grad-clip) or train in fp32 "
        "(--amp off)"
    )
