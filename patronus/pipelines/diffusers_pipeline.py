"""Patronus as a diffusers pipeline.

``PatronusPipeline`` (a ``diffusers.DiffusionPipeline``) has two components: ``unet``, a
:class:`PatronusDenoiser` (the whole Patronus model, prototype block and UNet, as a diffusers
``ModelMixin`` + ``ConfigMixin``: ``config.json`` holds the Patronus config and the checkpoint's
metadata, the weights are the Patronus state dict under ``model.``), and ``scheduler``, any
DDPM-family diffusers scheduler with the model's noise schedule (by default the fused
``PatronusDDIMScheduler``). ``save_pretrained`` / ``from_pretrained`` work on local folders as for
any pipeline (import this module first, so that diffusers finds the classes).

``pipe(images=... | activations=..., num_inference_steps, generator, guidance_scale)`` runs
``Patronus.sample(..., scheduler=pipe.scheduler)``: the scheduler's own loop, the same images as
that call for the same generator. ``pipe.encode(images)`` gives the activations, minimum distances
and winning patches. ``patronus export-diffusers`` / ``import-diffusers`` convert checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from patronus.errors import MissingDependencyError

try:
    # from the defining modules (diffusers' lazy top-level names type-check as placeholders)
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as error:  # pragma: no cover - exercised without diffusers only
    raise MissingDependencyError(
        "patronus.pipelines.diffusers_pipeline needs diffusers: pip install diffusers"
    ) from error

from patronus.diffusion.diffusers_schedulers import PatronusDDIMScheduler, SchedulerMixin
from patronus.models import Patronus, PatronusConfig
from patronus.nn.prototype_layer import PrototypeOutput

# diffusers' loader looks the base classes it knows up by name in the component's module
__all__ = ["ModelMixin", "PatronusDenoiser", "PatronusPipeline", "SchedulerMixin"]

OUTPUT_TYPES = ("pil", "np", "pt")


class PatronusDenoiser(ModelMixin, ConfigMixin):  # type: ignore[misc]  # as diffusers' own
    """A whole Patronus model as a diffusers model. ``forward(sample, timestep, activations)``
    predicts the noise, (B, C, H, W), (B,), (B, P) -> (B, C, H, W); ``model`` is the
    :class:`~patronus.Patronus` itself."""

    @register_to_config
    def __init__(self, patronus: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = Patronus(PatronusConfig.from_dict(patronus))

    @classmethod
    def from_patronus(
        cls, model: Patronus, metadata: dict[str, Any] | None = None
    ) -> PatronusDenoiser:
        """A denoiser holding a copy of ``model``'s weights (``metadata``: the checkpoint's other
        config fields, kept for the way back)."""
        denoiser = cls(patronus=model.config.to_dict(), metadata=metadata)
        denoiser.model.load_state_dict(model.state_dict())
        return denoiser.to(model.device)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, activations: torch.Tensor
    ) -> torch.Tensor:
        return self.model(sample, timestep, activations)


def default_scheduler(model: Patronus) -> PatronusDDIMScheduler:
    """The fused DDIM scheduler with the model's own betas, x0 unclipped as ``Patronus.sample``."""
    betas = model.schedule.betas.tolist()
    return PatronusDDIMScheduler(
        num_train_timesteps=len(betas), trained_betas=betas, clip_sample=False
    )


class PatronusPipeline(DiffusionPipeline):
    """Conditional generation from prototype activations (or the activations of images)."""

    unet: PatronusDenoiser  # registered components (register_modules sets them)
    scheduler: SchedulerMixin

    def __init__(self, unet: PatronusDenoiser, scheduler: SchedulerMixin) -> None:
        if not isinstance(unet, PatronusDenoiser):  # e.g. another pipeline's folder
            raise TypeError(
                f"unet must be a PatronusDenoiser (as `patronus export-diffusers` writes), got a "
                f"{type(unet).__name__}"
            )
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_patronus(
        cls,
        model: Patronus,
        scheduler: SchedulerMixin | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> PatronusPipeline:
        """A pipeline around a copy of ``model`` (default scheduler: :func:`default_scheduler`)."""
        denoiser = PatronusDenoiser.from_patronus(model, metadata)
        return cls(unet=denoiser, scheduler=scheduler or default_scheduler(model))

    @property
    def patronus(self) -> Patronus:
        return self.unet.model

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> PrototypeOutput:
        """Images (B, C, H, W) in [-1, 1] -> activations (B, P), minimum distances (B, P) and
        winning patch indices (B, P)."""
        model = self.patronus.eval()
        model.check_images(images, "images")
        return model.prototype_output(images.to(model.device))

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor | None = None,
        activations: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Samples conditioned on ``activations`` (B, P), or on the activations of ``images``
        (B, C, H, W) in [-1, 1]: x_T drawn from ``generator`` (which may be a CPU generator for a
        pipeline on a GPU, as in diffusers), then the scheduler's loop.
        ``output_type``: "pil" (a list of images), "np" ((B, H, W, C) in [0, 1]) or "pt"
        ((B, C, H, W) in [0, 1])."""
        if (images is None) == (activations is None):
            raise ValueError("pass either images or activations")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        model = self.patronus
        if images is not None:
            activations = self.encode(images).activations
        assert activations is not None  # (for type checkers: one of the two, checked above)
        # as diffusers' pipelines draw their latents: a CPU generator for a pipeline on a GPU
        # draws on the CPU (the same x_T on every device), then moves them
        x_T = randn_tensor(
            (activations.shape[0], *model.config.image_shape), generator, model.device
        )
        samples = model.sample(
            activations.to(model.device), num_inference_steps, generator=generator, x_T=x_T,
            guidance_scale=guidance_scale, scheduler=self.scheduler,
        )  # fmt: skip
        pixels: Any = (samples / 2 + 0.5).clamp(0, 1)  # a tensor, an array or PIL images
        if output_type != "pt":
            pixels = pixels.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                pixels = self.numpy_to_pil(pixels)
        return ImagePipelineOutput(images=pixels) if return_dict else (pixels,)
