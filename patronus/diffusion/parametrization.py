"""What a network's output means: the clean sample x0 it implies, and the per-sample dynamic
thresholds of x0 (Imagen's dynamic thresholding, as diffusers implements it)."""

from __future__ import annotations

import torch

PREDICTIONS = ("epsilon", "sample", "v_prediction")


def predicted_x0(
    sample: torch.Tensor, model_output: torch.Tensor, abar: torch.Tensor, prediction: str
) -> torch.Tensor:
    """x0 implied by ``model_output`` at noise level abar (broadcastable to ``sample``):
    epsilon: (x - sqrt(1 - abar) eps) / sqrt(abar); sample: the output itself;
    v_prediction: sqrt(abar) x - sqrt(1 - abar) v."""
    if prediction == "epsilon":
        return (sample - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if prediction == "sample":
        return model_output
    if prediction == "v_prediction":
        return abar.sqrt() * sample - (1 - abar).sqrt() * model_output
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def dynamic_thresholds(
    x0: torch.Tensor, quantile: float, max_value: float = float("inf")
) -> torch.Tensor:
    """(B,) per-sample thresholds: the ``quantile`` of |x0| over each sample, in [1, max_value]."""
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    return torch.quantile(flat, quantile, dim=1).clamp(min=1.0, max=max_value)
