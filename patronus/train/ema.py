"""Exponential moving average of a model's floating-point state."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * value, for every floating tensor of the state."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            name: value.detach().clone()
            for name, value in model.state_dict().items()
            if value.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        for name, shadow in self.shadow.items():
            shadow.lerp_(state[name].detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, shadow in self.shadow.items():
            shadow.copy_(state[name])

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with EMA values for its floating tensors."""
        return {name: self.shadow.get(name, value) for name, value in model.state_dict().items()}
