"""Training of the activation prior on the activations of a trained model's training set."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from patronus.models.prior import ActivationPrior


def train_prior(
    prior: ActivationPrior,
    activations: torch.Tensor,
    epochs: int = 200,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Fit the normalisation to ``activations`` (N, P) and train with Adam on the noise MSE
    (t uniform in [0, T)) on ``device``, where the prior is moved; returns the mean loss of
    every epoch. The order, timesteps and noise are drawn on the CPU from ``seed`` whatever the
    device."""
    if activations.dim() != 2 or activations.shape[1] != prior.config.num_prototypes:
        expected = prior.config.num_prototypes
        raise ValueError(f"activations must be (N, {expected}), got {tuple(activations.shape)}")
    if len(activations) < 2 or not torch.isfinite(activations).all():
        raise ValueError("activations must be finite, at least 2 rows (the normalisation's std)")
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1 and learning_rate > 0, got {epochs}, "
            f"{batch_size}, {learning_rate}"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prior.to(device)
    activations = activations.to(device)
    prior.fit_normalisation(activations)
    data = prior.normalise(activations)
    abar = prior.schedule.alphas_cumprod.float().to(device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=learning_rate)
    prior.train()
    losses = []
    for _ in tqdm(range(epochs), desc="prior", disable=not progress):
        order = torch.randperm(len(data), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(data), batch_size):
            x0 = data[order[start : start + batch_size].to(device)]
            t = torch.randint(0, prior.config.timesteps, (len(x0),), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            t, noise = t.to(device), noise.to(device)
            a = abar[t][:, None, None]
            loss = torch.nn.functional.mse_loss(
                prior(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / batches)
    return losses
