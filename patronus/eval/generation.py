"""Generation quality: samples written as PNG, and their Fréchet and kernel distances to a
reference set in the features of a classifier the project trains itself (or a user-supplied
feature extractor)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from patronus.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from patronus.eval.frechet import feature_statistics, frechet_distance, kernel_distance
from patronus.models import Patronus
from patronus.utils.images import save_image, to_uint8

Features = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def generate(
    model: Patronus,
    activations: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
    sampler: str = DEFAULT_SAMPLER,
    clip_x0: bool = True,
) -> torch.Tensor:
    """Decode one sample per activation vector (N, P) -> (N, C, H, W) on the CPU, with
    ``steps`` network calls of ``sampler`` ("ddim", "dpmpp-2m", "dpmpp-3m") per image, predicted
    x0 clipped to [-1, 1] on every step unless ``clip_x0`` is False."""
    chunks = activations.split(batch_size)
    samples = [
        model.sample(
            s.to(model.device), steps, generator=generator, clip_x0=clip_x0, sampler=sampler
        ).cpu()
        for s in tqdm(chunks, desc="generating", disable=not progress)
    ]
    return torch.cat(samples)


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    """One lossless PNG per image (00000.png, ...)."""
    for index, pixels in enumerate(to_uint8(images).permute(0, 2, 3, 1)):
        save_image(pixels, folder / f"{index:05d}.png")
    return folder


@torch.no_grad()
def features_of(
    extractor: Features,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """images (N, C, H, W) -> float64 features (N, D) on the CPU, ``batch_size`` images at a time
    moved to ``device`` (where the extractor's weights are)."""
    chunks = images.split(batch_size)
    return torch.cat(
        [
            extractor(chunk.to(device)).double().cpu()
            for chunk in tqdm(chunks, desc=desc, disable=not progress)
        ]
    )


def distances(
    extractor: Features,
    generated: torch.Tensor,
    reference: torch.Tensor,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Fréchet distance and KID (mean, std) between generated and reference images, the counts
    and the feature dimension D (with fewer images than D the covariances are singular and the
    FID is biased upwards: it compares only with FIDs of as many images; KID is unbiased). The
    features are computed on ``device``, where the extractor's weights must be."""
    fake = features_of(
        extractor, generated, device=device, progress=progress, desc="features of generated"
    )
    real = features_of(
        extractor, reference, device=device, progress=progress, desc="features of reference"
    )
    fid = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    kid, kid_std = kernel_distance(fake, real, generator=torch.Generator().manual_seed(seed))
    return {
        "fid": fid,
        "kid": kid,
        "kid_std": kid_std,
        "generated": len(generated),
        "reference": len(reference),
        "feature_dim": fake.shape[1],
    }
