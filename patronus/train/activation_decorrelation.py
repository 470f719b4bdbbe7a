"""Activation decorrelation: a training term that makes each prototype's activation say something
the others do not.

Trained on the noise-prediction loss alone, the prototypes of a small model fire together: in the
shipped Fashion-MNIST model each activation s_J is predicted by a linear fit of the other 29 with
a median held-out R^2 of 0.84 (mean squared pairwise correlation 0.17). An edit that raises one
activation to its 99% quantile (about 1.8 standard deviations above its mean) while the others,
which predict it to within 0.4 of a standard deviation, stay where they are asks for a combination
the denoiser never saw in training, and a denoiser that can read s_J off the other activations
might have no reason to follow it alone.

This term penalises the correlation of the activations over the batch::

    z = (s - mean_batch(s)) / (std_batch(s) + 1e-3)            (B, P), per prototype
    C = z^T z / (B - 1)                                        (P, P), the correlation matrix
    loss = mean over J != K of C[J, K]^2

Its gradient reaches the encoder and the prototypes (what the activations are), not the denoiser.
The idea is the decorrelation term of VICReg (Bardes et al., 2022) and Barlow Twins (Zbontar et
al., 2021), applied to the prototype activations.

Measured on Fashion-MNIST (``fmnist-cpu``, weight 1; see docs/edit-fidelity.md): after 1000 steps
the term has removed the redundancy (R^2 0.75 -> 0.05) but the edits do not follow the activations
better (median edit fidelity 0.12 -> 0.07); trained on to 4000 steps, the denoiser stops using the
activations at all (its noise-prediction error is the same when every image gets another image's
activations, where the shipped model's rises up to 5.5x) and edits change nothing. It is off by
default and is not a way to make edits work.
"""

from __future__ import annotations

import torch

STD_FLOOR = 1e-3  # keeps a prototype whose activation does not vary from dividing by zero


def activation_decorrelation_loss(s: torch.Tensor) -> torch.Tensor:
    """Activations s (B, P), B >= 2, P >= 2 -> () mean squared off-diagonal batch correlation."""
    if s.dim() != 2 or s.shape[0] < 2 or s.shape[1] < 2:
        raise ValueError(
            f"activation decorrelation needs s of shape (B >= 2, P >= 2), got {tuple(s.shape)}"
        )
    s = s.float()
    z = (s - s.mean(0)) / (s.std(0) + STD_FLOOR)
    correlation = z.T @ z / (s.shape[0] - 1)
    off_diagonal = ~torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
    return correlation[off_diagonal].square().mean()
