"""The activation prior: a small diffusion model over activation vectors s, for unconditional
generation (as in the paper, Weng et al., ICLR 2026): sample s from the prior, then decode an
image conditioned on it.

s (normalised per prototype with the training set's mean and standard deviation) is treated as a
1-channel sequence of length P and denoised by a 1-D UNet with skip connections (the original's
dropped them), T = 100 steps of linear beta from 1e-3 to 0.2.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from patronus.diffusion.parametrization import predicted_x0
from patronus.diffusion.schedules import NoiseSchedule
from patronus.errors import CheckpointError, MissingFileError
from patronus.nn.embeddings import TimeEmbedding


@dataclass(frozen=True)
class PriorConfig:
    num_prototypes: int
    timesteps: int = 100
    beta_start: float = 1e-3
    beta_end: float = 0.2
    channels: int = 64
    levels: int = 2

    def __post_init__(self) -> None:
        if self.num_prototypes < 1 or self.levels < 0:
            raise ValueError(
                f"num_prototypes must be >= 1 and levels >= 0, got {self.num_prototypes} and "
                f"{self.levels}"
            )
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                "the noise schedule needs 0 < beta_start <= beta_end < 1, got "
                f"{self.beta_start} and {self.beta_end}"
            )
        if self.channels < 8 or self.channels % 8:
            raise ValueError(
                f"channels must be a multiple of 8 (GroupNorm of 8), got {self.channels}"
            )


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(emb, c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm1(self.conv1(x))) + self.time(emb)[:, :, None]
        return nn.functional.silu(self.norm2(self.conv2(h))) + self.skip(x)


class ActivationPrior(nn.Module):
    """eps_theta(s_t, t) for normalised activation vectors (B, 1, P)."""

    mean: torch.Tensor  # (P,) buffers: the activations' normalisation
    std: torch.Tensor

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.time_embedding = TimeEmbedding(config.timesteps, c, 2 * c)
        self.stem = nn.Conv1d(1, c, 3, padding=1)
        self.down = nn.ModuleList(
            [_Block(c * 2**i, c * 2 ** (i + 1), 2 * c) for i in range(config.levels)]
        )
        self.middle = _Block(c * 2**config.levels, c * 2**config.levels, 2 * c)
        self.up = nn.ModuleList(
            [_Block(c * 2 ** (i + 2), c * 2**i, 2 * c) for i in reversed(range(config.levels))]
        )
        self.head = nn.Conv1d(c, 1, 3, padding=1)
        self.register_buffer("mean", torch.zeros(config.num_prototypes))
        self.register_buffer("std", torch.ones(config.num_prototypes))
        self.schedule = NoiseSchedule(
            torch.linspace(
                config.beta_start, config.beta_end, config.timesteps, dtype=torch.float64
            )
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        h = self.stem(x)
        skips = []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)

    def normalise(self, s: torch.Tensor) -> torch.Tensor:
        """(B, P) activations -> (B, 1, P) normalised."""
        return ((s - self.mean) / self.std)[:, None, :]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, :] * self.std + self.mean

    def fit_normalisation(self, s: torch.Tensor) -> None:
        self.mean.copy_(s.mean(0))
        self.std.copy_(s.std(0).clamp_min(1e-6))


PRIOR_SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "original")


@torch.no_grad()
def sample_prior(
    prior: ActivationPrior,
    count: int,
    steps: int = 50,
    generator: torch.Generator | None = None,
    sampler: str = "ddim",
) -> torch.Tensor:
    """Draw ``count`` activation vectors (count, P) from the prior.

    ``sampler="ddim"``: deterministic DDIM (eta = 0) over ``steps`` respaced steps;
    ``"dpmpp-2m"`` / ``"dpmpp-3m"``: DPM-Solver++ multistep with ``steps`` network calls.
    ``sampler="original"``: the original implementation's loop over all T steps, kept for
    comparisons: it predicts x0 like DDIM but re-noises with fresh noise,
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) z, instead of the predicted noise.
    """
    from patronus.diffusion.samplers import SamplerOptions, run_sampler
    from patronus.diffusion.samplers import sample as sampled

    if sampler not in PRIOR_SAMPLERS:
        raise ValueError(f"sampler must be one of {PRIOR_SAMPLERS}, got {sampler!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    prior = prior.eval()
    device = prior.mean.device
    x = torch.randn((count, 1, prior.config.num_prototypes), generator=generator, device=device)
    if sampler != "original":
        options = SamplerOptions(sampler=sampler, steps=steps)
        return prior.denormalise(run_sampler(sampled(prior, x, prior.schedule, options)))
    abar = prior.schedule.alphas_cumprod
    for t in range(prior.config.timesteps - 1, -1, -1):
        eps = prior(x, torch.full((count,), t, dtype=torch.long, device=device))
        a_prev = float(abar[t - 1]) if t > 0 else 1.0
        x0 = predicted_x0(x, eps, abar[t].to(x), "epsilon")
        noise = torch.randn(x.shape, generator=generator, device=device) if t > 0 else 0.0
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * noise
    return prior.denormalise(x)


PRIOR_CONFIG_FILE = "prior.json"
PRIOR_WEIGHTS_FILE = "prior.safetensors"


def save_prior(prior: ActivationPrior, folder: str | Path) -> list[Path]:
    """Write ``prior.json`` and ``prior.safetensors`` into ``folder``; returns the paths."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / PRIOR_CONFIG_FILE
    config_path.write_text(json.dumps(asdict(prior.config), indent=2) + "\n")
    weights = folder / PRIOR_WEIGHTS_FILE
    save_file({k: v.detach().contiguous().cpu() for k, v in prior.state_dict().items()}, weights)
    return [config_path, weights]


def load_prior(folder: str | Path) -> ActivationPrior:
    """The activation prior saved in ``folder`` (by ``patronus train-prior``), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / PRIOR_CONFIG_FILE).is_file():
        raise MissingFileError(
            f"no activation prior in {folder} (no {PRIOR_CONFIG_FILE}): run "
            "`patronus train-prior` first, and pass its output folder as --prior"
        )
    try:
        config = PriorConfig(**json.loads((folder / PRIOR_CONFIG_FILE).read_text()))
        prior = ActivationPrior(config)
        prior.load_state_dict(load_file(str(folder / PRIOR_WEIGHTS_FILE)))
    except (TypeError, ValueError, OSError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"{folder} holds no readable activation prior: {error}") from error
    return prior.eval()
