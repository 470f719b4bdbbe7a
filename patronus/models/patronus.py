"""``Patronus``: the prototype block, the conditional UNet and the noise schedule, tied together."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from patronus.diffusion import samplers
from patronus.diffusion.loss import noisy_sample
from patronus.diffusion.samplers import (
    AfterStep,
    EpsFn,
    SamplerOptions,
    SamplerStep,
    ddim_inversion,
    run_sampler,
)
from patronus.diffusion.scheduler_loop import check_scheduler_schedule, scheduler_sampling
from patronus.diffusion.schedules import NoiseSchedule
from patronus.models.config import PatronusConfig
from patronus.models.unet import PatronusUNet
from patronus.nn.proto_encoder import ProtoEncoder
from patronus.nn.prototype_layer import PrototypeLayer, PrototypeOutput

if TYPE_CHECKING:  # diffusers is optional: imported where a model uses it
    from patronus.models.diffusers_denoiser import DiffusersDenoiser

Callback = Callable[[SamplerStep], None]
PRECISIONS = ("fp32", "bf16")
RANGE_TOLERANCE = 1e-3  # resampled images may overshoot [-1, 1] by rounding


class TrainingForward(NamedTuple):
    """What one training forward pass of B images computed."""

    mse: torch.Tensor  # () the noise-prediction loss
    x_t: torch.Tensor  # (B, C, H, W) the noisy images
    activations: torch.Tensor  # (B, P) s of the clean images (before condition dropout)
    eps: torch.Tensor  # (B, C, H, W) the predicted noise
    kept: torch.Tensor  # (B,) bool: the row was conditioned on its own s (not dropped)


class Patronus(nn.Module):
    """A diffusion model conditioned on the prototype activations of the clean image.

    ``encode(x0) -> s`` computes the activations; ``forward(x_t, t, s)`` predicts the noise;
    ``sample``, ``invert``, ``reconstruct`` and ``edit`` run the samplers. Images are (B, C, H, W)
    in [-1, 1]; s is (B, P). Sampling methods run without gradients and in eval mode (the module's
    mode is restored afterwards); each has a ``*_steps`` twin yielding every
    :class:`~patronus.diffusion.SamplerStep` for tracing.
    """

    def __init__(self, config: PatronusConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = ProtoEncoder(
            config.image_channels, enc.channels, enc.kernel_sizes, enc.strides, enc.paddings
        )
        self.encoder.output_size((config.image_size, config.image_size))
        self.prototype_layer = PrototypeLayer(
            config.num_prototypes, config.prototype_dim, config.activation, config.activation_eps
        )
        self.unet: PatronusUNet | DiffusersDenoiser
        if config.diffusers_unet is not None:
            from patronus.models.diffusers_denoiser import DiffusersDenoiser

            self.unet = DiffusersDenoiser(
                config.diffusers_unet["class"], config.diffusers_unet.get("config", {}),
                config.num_prototypes, config.image_channels,
            )  # fmt: skip
        else:
            unet = PatronusUNet(
                config.unet, config.image_channels, config.num_prototypes,
                config.diffusion.timesteps,
            )  # fmt: skip
            if config.image_size % unet.downsampling_factor:
                raise ValueError(
                    f"image_size {config.image_size} must be divisible by "
                    f"{unet.downsampling_factor} (2 ** (len(channel_mults) - 1))"
                )
            self.unet = unet
        self.schedule = NoiseSchedule.from_name(
            config.diffusion.schedule, config.diffusion.timesteps
        )
        if config.condition_dropout > 0:  # the activations guidance pushes away from
            self.null_activations = nn.Parameter(torch.zeros(config.num_prototypes))
        self._abar_by_device: dict[torch.device, torch.Tensor] = {}
        self.precision = "fp32"  # of the denoiser's calls in sampling (set_precision)

    @property
    def num_prototypes(self) -> int:
        return self.config.num_prototypes

    @property
    def device(self) -> torch.device:
        return self.prototype_layer.prototypes.device

    # ----------------------------------------------------------------------------------- checks
    def check_images(
        self, images: torch.Tensor, name: str = "images", values: bool = True, clean: bool = True
    ) -> None:
        """Raise a clear error unless images are float (B, C, H, W) of this model's shape and,
        with ``values``, finite and (``clean`` images, not noise) within [-1, 1] (reading the
        values: one host synchronisation on a GPU)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be floating point in [-1, 1], got {images.dtype}")
        weights = self.prototype_layer.prototypes.dtype
        if images.dtype != weights and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(
                f"{name} are {images.dtype} but the model's weights are {weights}: convert them "
                f"with .to({weights})"
            )
        expected = self.config.image_shape
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{name} must be (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(images.shape)}"
            )
        if not values or images.numel() == 0:
            return
        largest = float(images.detach().abs().amax())  # NaN and Inf carry through amax
        if not math.isfinite(largest):
            raise ValueError(f"{name} contain NaN or Inf")
        if clean and largest > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"{name} must be in [-1, 1], got values up to {largest:.4g} in magnitude "
                "(pixels in [0, 255] or [0, 1] map to [-1, 1] as x / 127.5 - 1 or x * 2 - 1)"
            )

    def check_activations(self, s: torch.Tensor) -> None:
        if not isinstance(s, torch.Tensor):
            raise TypeError(
                f"activations s must be a floating-point torch.Tensor (B, {self.num_prototypes}), "
                f"got {type(s).__name__} (encode(x0) gives an image's activations)"
            )
        if not s.is_floating_point():
            raise TypeError(f"activations s must be floating point, got {s.dtype}")
        if s.dim() != 2 or s.shape[1] != self.num_prototypes:
            raise ValueError(
                f"activations s must be (B, {self.num_prototypes}), got {tuple(s.shape)}"
            )
        if not torch.isfinite(s).all():
            raise ValueError("activations s contain NaN or Inf")

    # ------------------------------------------------------------------------------ the model
    def prototype_output(self, x0: torch.Tensor) -> PrototypeOutput:
        """Clean images (B, C, H, W) -> activations, min distances and winning patches (B, P).
        The images' shape and dtype are checked, not their values (NaN gives NaN activations)."""
        self.check_images(x0, "x0", values=False)
        return self.prototype_layer(self.encoder(x0))

    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean images (B, C, H, W) -> prototype activations s (B, P) float32."""
        return self.prototype_output(x0).activations

    def patch_boxes(self, patch_index: torch.Tensor) -> torch.Tensor:
        """Flat feature-cell indices (...) (e.g. ``prototype_output(x0).patch_index``) -> the
        pixel boxes (top, left, bottom, right) of their receptive fields (..., 4) int64, half-open,
        clamped to the image, on the indices' device."""
        return self.encoder.patch_boxes(patch_index, (self.config.image_size,) * 2)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Noisy images (B, C, H, W), t (B,) int64, s (B, P) -> predicted noise (B, C, H, W)."""
        return self.unet(x_t, t, s)

    def alphas_cumprod(self, device: torch.device) -> torch.Tensor:
        """abar (T,) float64 on ``device`` (cached, so training steps copy nothing)."""
        if device not in self._abar_by_device:
            self._abar_by_device[device] = self.schedule.alphas_cumprod.to(device)
        return self._abar_by_device[device]

    def training_loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """MSE between ``noise`` and the prediction at x_t = q(x0, t, noise), s from x0 (in
        training mode replaced by the null vector with probability ``condition_dropout``)."""
        return self.training_forward(x0, t, noise).mse

    def training_forward(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> TrainingForward:
        """One training forward pass: :meth:`training_loss` and what it computed on the way
        (x_t, the image's activations, the predicted noise, which rows kept their activations)."""
        x_t = noisy_sample(x0, t, noise, self.alphas_cumprod(x0.device))
        s = self.encode(x0)
        kept = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        condition = s
        if self.training and self.config.condition_dropout > 0:
            kept = torch.rand(s.shape[0], device=s.device) >= self.config.condition_dropout
            condition = torch.where(kept[:, None], s, self.null_activations.to(s.dtype))
        eps = self(x_t, t, condition)
        mse = nn.functional.mse_loss(eps.float(), noise.float())
        return TrainingForward(mse, x_t, s, eps, kept)

    def compile_denoiser(self, **options) -> Patronus:
        """``torch.compile`` the UNet in place (``options`` go to torch.compile, e.g.
        ``mode="max-autotune"``); weights and state-dict keys are unchanged. Returns self."""
        self.unet.compile(**options)
        return self

    def set_precision(self, precision: str) -> Patronus:
        """The denoiser's arithmetic wherever it is called to sample, invert, edit or explain:
        "fp32" (the default) or "bf16" (autocast; fast on GPUs and on CPUs with AVX512-BF16 or
        AMX, at a small error in the predicted noise). Encoding, training and the scheduler step
        are unaffected. Returns self."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        return self

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The denoiser at ``self.precision``, its output in x_t's dtype."""
        with torch.autocast(
            x_t.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            return self(x_t, t, s).to(x_t.dtype)

    def guidance_scale(self, scale: float | None = None, referenced: bool = False) -> float:
        """``scale``, or this model's recommended one (``config.guidance_scale``) for None.
        Guiding needs the learned null vector unless a reference is given (``referenced``)."""
        scale = self.config.guidance_scale if scale is None else float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"guidance_scale must be finite, got {scale}")
        if scale != 1.0 and not referenced and not hasattr(self, "null_activations"):
            raise ValueError(
                f"guidance_scale={scale} needs a model trained with condition_dropout > 0 (it "
                "learns the null activations guidance pushes away from), or a reference; use 1 "
                "or None"
            )
        return scale

    def eps_fn(
        self,
        s: torch.Tensor,
        guidance_scale: float = 1.0,
        reference: torch.Tensor | None = None,
    ) -> EpsFn:
        """The denoiser conditioned on s, as the samplers call it. With a scale other than 1 it
        returns (conditioned on s, conditioned on the reference) predictions from one batched
        call, which the fused scheduler step combines as ref + w (conditioned - ref). The
        reference is the learned null vector, or ``reference`` activations (B, P): guiding an
        edit against the image's own activations amplifies what the edit changes, w times."""
        if self.guidance_scale(guidance_scale, reference is not None) == 1.0:
            return lambda x_t, t: self._denoise(x_t, t, s)
        if reference is None:
            reference = self.null_activations.to(s).expand_as(s)
        self.check_activations(reference)
        if reference.shape != s.shape:
            raise ValueError(
                f"the reference must be like s {tuple(s.shape)}, got {reference.shape}"
            )
        both = torch.cat([s, reference.to(s)])

        def guided(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self._denoise(x_t.repeat(2, 1, 1, 1), t.repeat(2), both)
            conditioned, null = out.chunk(2)
            return conditioned, null

        return guided

    # ------------------------------------------------------------------------------ sampling
    @contextmanager
    def _inference(self):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) of shape (batch, C, H, W) on the model's device."""
        return torch.randn(
            (batch, *self.config.image_shape), generator=generator, device=self.device
        )

    def sample_steps(
        self,
        s: torch.Tensor,
        options: SamplerOptions | int | None = None,
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        guidance_reference: torch.Tensor | None = None,
        scheduler: Any = None,
        after_step: AfterStep | None = None,
        **changes,
    ) -> Iterator[SamplerStep]:
        """Trajectory of :meth:`sample` (call within ``torch.no_grad()``). ``after_step`` may
        change the sample each step hands on (:data:`patronus.diffusion.samplers.AfterStep`)."""
        options = SamplerOptions.of(options, **changes)
        referenced = guidance_reference is not None
        scale = self.guidance_scale(options.guidance_scale, referenced)
        options = options.replace(guidance_scale=scale)
        self.check_activations(s)
        if x_T is None:
            x_T = self.initial_noise(s.shape[0], generator)
        self.check_images(x_T, "x_T", clean=False)
        if x_T.shape[0] != s.shape[0]:
            raise ValueError(f"x_T has {x_T.shape[0]} samples but s has {s.shape[0]}")
        eps_fn = self.eps_fn(s, scale, guidance_reference)
        if scheduler is not None:
            plain = SamplerOptions(steps=options.steps, guidance_scale=scale)
            if options != plain:
                raise ValueError(
                    "with a diffusers scheduler its config decides how to step: leave sampler, "
                    "eta, clipping, thresholding and cuda_graph at their defaults"
                )
            check_scheduler_schedule(scheduler, self.schedule)
            return scheduler_sampling(
                eps_fn, x_T, scheduler, options.steps, generator, scale, after_step,
            )  # fmt: skip
        return samplers.sample(eps_fn, x_T, self.schedule, options, generator, after_step)

    def sample(
        self,
        s: torch.Tensor,
        options: SamplerOptions | int | None = None,
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        callback: Callback | None = None,
        progress: bool = False,
        guidance_reference: torch.Tensor | None = None,
        scheduler: Any = None,
        after_step: AfterStep | None = None,
        **changes,
    ) -> torch.Tensor:
        """Generate images (B, C, H, W) conditioned on activations s (B, P).

        ``options`` is a :class:`~patronus.diffusion.SamplerOptions` (default: DPM-Solver++ 2M,
        20 network calls) or a number of steps; keywords change its fields: ``sampler``
        ("dpmpp-2m", "dpmpp-3m": DPM-Solver++ multistep, ``steps`` network calls; "ddim":
        ``steps`` respaced steps with ``eta``; "ddpm": all T ancestral steps with
        ``variance``), ``clip_x0`` (clip every predicted x0 to [-1, 1]), ``dynamic_threshold``
        (a quantile, e.g. 0.995: clip and rescale per sample), ``cuda_graph`` (capture one step,
        network + scheduler, as a CUDA graph and replay it; DDIM and DDPM). ``x_T`` defaults to
        N(0, I) drawn from ``generator``, which also seeds the steps' noise. E.g.
        ``model.sample(s, 20, clip_x0=True, generator=g)``.
        ``guidance_scale`` w (default the model's) guides against the learned null vector, or
        against ``guidance_reference`` activations (B, P) when given. ``scheduler``: a diffusers
        scheduler (with this model's noise schedule) runs the loop instead, diffusers' way, over
        ``steps`` inference steps (:mod:`patronus.diffusion.scheduler_loop`). ``after_step``
        may change the sample each step hands on (:data:`patronus.diffusion.samplers.AfterStep`).
        """
        options = SamplerOptions.of(options, **changes)
        with self._inference():
            trajectory = self.sample_steps(
                s, options, generator=generator, x_T=x_T, guidance_reference=guidance_reference,
                scheduler=scheduler, after_step=after_step,
            )  # fmt: skip
            total = options.network_calls(self.schedule)
            return run_sampler(trajectory, callback, progress, total, "sampling")

    def _own_activations(self, x0: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        self.check_images(x0, "x0")
        if s is None:
            return self.encode(x0)
        self.check_activations(s)
        return s

    def invert_steps(
        self,
        x0: torch.Tensor,
        s: torch.Tensor | None = None,
        steps: int = 50,
        cuda_graph: bool = False,
        guidance_scale: float | None = None,
    ) -> Iterator[SamplerStep]:
        """Trajectory of :meth:`invert` (call within ``torch.no_grad()``)."""
        s = self._own_activations(x0, s)
        scale = self.guidance_scale(guidance_scale)
        return ddim_inversion(self.eps_fn(s, scale), x0, self.schedule, steps, cuda_graph, scale)

    def invert(
        self,
        x0: torch.Tensor,
        s: torch.Tensor | None = None,
        steps: int = 50,
        callback: Callback | None = None,
        progress: bool = False,
        cuda_graph: bool = False,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """DDIM-invert clean images (B, C, H, W) into x_T given s (default: encode(x0)), with
        the guidance scale decoding will use (default: the model's), so decoding returns x0."""
        with self._inference():
            trajectory = self.invert_steps(x0, s, steps, cuda_graph, guidance_scale)
            return run_sampler(trajectory, callback, progress, steps, "inverting")

    def reconstruct(
        self,
        x0: torch.Tensor,
        steps: int = 50,
        progress: bool = False,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Invert x0 with its own activations, then decode with DDIM (eta = 0): (B, C, H, W)."""
        with self._inference():
            s = self.encode(x0)
            x_T = self.invert(x0, s, steps, progress=progress, guidance_scale=guidance_scale)
            return self.sample(
                s, steps, x_T=x_T, progress=progress, guidance_scale=guidance_scale, sampler="ddim"
            )

    def edit(
        self,
        x0: torch.Tensor,
        s_edit: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        steps: int = 50,
        x_T: torch.Tensor | None = None,
        progress: bool = False,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Invert x0 with its own activations, then decode from the same x_T with edited ones.

        ``s_edit`` is the new (B, P) activations, or a function of the original ones returning
        them; it gets a copy that it may change in place (``s[:, j] = 9.0; return s``). Pass
        ``x_T`` to reuse an inversion (made with the same guidance scale). ``guidance_scale``
        defaults to the model's recommended one.
        """
        with self._inference():
            s = self.encode(x0)
            if x_T is None:
                x_T = self.invert(x0, s, steps, progress=progress, guidance_scale=guidance_scale)
            new_s = s_edit(s.clone()) if callable(s_edit) else s_edit
            if not isinstance(new_s, torch.Tensor):
                raise TypeError(
                    f"s_edit must be a (B, P) tensor or return one, got {type(new_s).__name__}"
                )
            if new_s.shape != s.shape:
                raise ValueError(
                    f"edited activations must be {tuple(s.shape)}, got {tuple(new_s.shape)}"
                )
            return self.sample(
                new_s,
                steps,
                x_T=x_T,
                progress=progress,
                guidance_scale=guidance_scale,
                sampler="ddim",
            )
