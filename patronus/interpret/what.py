"""What: the distribution-aligned visualisation of each prototype, and its nearest real patches.

Visualisation (the paper's, with the original's defects fixed): invert n images with their own
activations, set prototype J's activation to an upper bound (a per-prototype quantile of its
activations over a seeded reference set, or the original's global maximum), decode every image
from its own x_T, re-encode the edits, keep the one whose s_J rose most, and box its winning patch.
All prototypes and images are decoded together in batches, with respaced steps.

Decoding uses exactly the settings of the inversion (DDIM, eta 0, the same steps, no clipping of
the predicted x0), so that decoding an image's own activations returns its reconstruction and
every difference an edit shows comes from the edit, not from the decoder.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from patronus.diffusion.samplers import AfterStep, SamplerStep
from patronus.interpret.prototype_guidance import PrototypeGuidance, prototype_guidance_hook
from patronus.interpret.region import decode_in_region, region_masks, unedited_latents
from patronus.models import Patronus


def activation_bounds(
    activations: torch.Tensor, quantile: float = 0.99, global_max: bool = False
) -> torch.Tensor:
    """Upper bounds (P,) for edits from reference activations (N, P): each prototype's
    ``quantile`` (1.0: its maximum), or with ``global_max`` the one largest value for all (the
    original's choice)."""
    if activations.dim() != 2 or activations.shape[0] == 0:
        raise ValueError(
            f"reference activations must be (N, P) with N > 0, got {activations.shape}"
        )
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if not torch.isfinite(activations).all():
        raise ValueError("reference activations contain NaN or Inf")
    if global_max:
        return activations.max().expand(activations.shape[1]).clone()
    return torch.quantile(activations.float(), quantile, dim=0)


def checked_indices(
    what: str, indices: Sequence[int], count: int, distinct: bool = False
) -> list[int]:
    """``indices`` as a non-empty list of ints in [0, count), or a ValueError naming ``what``
    (negative indices are refused: they would silently mean counting from the end); with
    ``distinct``, an index listed twice is refused too (results keyed by prototype would show it
    twice)."""
    listed = [int(i) for i in indices]
    if not listed:
        raise ValueError(f"{what} must list at least one index, got none")
    wrong = [i for i in listed if not 0 <= i < count]
    if wrong:
        raise ValueError(f"{what} must be in 0 .. {count - 1}, got {wrong}")
    if distinct and len(set(listed)) < len(listed):
        raise ValueError(f"{what} must be distinct, got {repeated_indices(listed)} more than once")
    return listed


def repeated_indices(indices: Sequence[int]) -> list[int]:
    """The indices listed more than once, sorted."""
    return sorted(i for i, times in Counter(indices).items() if times > 1)


@dataclass(frozen=True)
class Inversion:
    """Images with their own activations and DDIM latents."""

    images: torch.Tensor  # (n, C, H, W)
    activations: torch.Tensor  # (n, P)
    x_T: torch.Tensor  # (n, C, H, W)
    steps: int
    guidance_scale: float = 1.0  # the prototype guidance inverted (and decoded) with

    def select(self, indices: Sequence[int]) -> Inversion:
        """The inversion of the images at ``indices`` only."""
        listed = checked_indices("image indices", indices, self.x_T.shape[0])
        index = torch.tensor(listed, dtype=torch.long, device=self.x_T.device)
        return replace(
            self,
            images=self.images[index.to(self.images.device)],
            activations=self.activations[index.to(self.activations.device)],
            x_T=self.x_T[index],
        )

    def guidance_settings(self, s: torch.Tensor, edit_guidance: float = 1.0) -> dict:
        """The sampler's guidance settings: the inversion's own, or with ``edit_guidance`` != 1
        guidance against the images' own activations (s holds edits of them, tiled as
        :func:`edited_activations` tiles them)."""
        if not (math.isfinite(edit_guidance) and edit_guidance > 0):
            raise ValueError(  # 0 decodes the unedited image, a negative w the opposite edit
                f"edit_guidance must be finite and > 0 (1: plain edits), got {edit_guidance}"
            )
        if edit_guidance == 1.0:
            return {"guidance_scale": self.guidance_scale}
        if self.guidance_scale != 1.0:
            raise ValueError("edit guidance needs an inversion made without guidance (scale 1)")
        repeats, leftover = divmod(s.shape[0], self.activations.shape[0])
        if leftover:
            raise ValueError(
                f"{s.shape[0]} activations are not edits of the {len(self.images)} images"
            )
        reference = self.activations.repeat(repeats, 1)
        return {"guidance_scale": edit_guidance, "guidance_reference": reference}

    def decode_steps(
        self,
        model: Patronus,
        s: torch.Tensor,
        x_T: torch.Tensor | None = None,
        edit_guidance: float = 1.0,
        after_step: AfterStep | None = None,
    ) -> Iterator[SamplerStep]:
        """Trajectory of :meth:`decode` (call within ``torch.no_grad()``, model in eval mode);
        ``after_step`` may change the sample each step hands on (see
        :data:`patronus.diffusion.samplers.AfterStep`)."""
        x_T = self.x_T if x_T is None else x_T
        return model.sample_steps(
            s, self.steps, x_T=x_T, sampler="ddim", after_step=after_step,
            **self.guidance_settings(s, edit_guidance),
        )  # fmt: skip

    def decode(
        self,
        model: Patronus,
        s: torch.Tensor,
        x_T: torch.Tensor | None = None,
        edit_guidance: float = 1.0,
        after_step: AfterStep | None = None,
    ) -> torch.Tensor:
        """Decode activations s (B, P) from x_T (B, C, H, W; default this inversion's) with the
        inversion's own settings, so that ``decode(model, activations)`` is the reconstruction.

        ``edit_guidance`` w != 1 decodes edits of the images guided against their own
        activations: ref + w (edit - ref) per step, amplifying what the edit changes w times while
        an unchanged activation vector still decodes to (nearly) the reconstruction.
        ``after_step``: as in :meth:`decode_steps`."""
        x_T = self.x_T if x_T is None else x_T
        return model.sample(
            s, self.steps, x_T=x_T, sampler="ddim", after_step=after_step,
            **self.guidance_settings(s, edit_guidance),
        )  # fmt: skip


@torch.no_grad()
def invert_images(
    model: Patronus, images: torch.Tensor, steps: int = 50, guidance_scale: float | None = None
) -> Inversion:
    """DDIM-invert images (n, C, H, W) with their own activations and the guidance scale every
    decode of this inversion will use (default: the model's recommended one)."""
    scale = model.guidance_scale(guidance_scale)
    s = model.encode(images)
    return Inversion(images, s, model.invert(images, s, steps, guidance_scale=scale), steps, scale)


def edited_activations(
    activations: torch.Tensor,
    prototypes: Sequence[int],
    values: torch.Tensor,
    directions: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, P) activations -> (J * n, P): for each prototype J (in order), every image's
    activations with s_J set to ``values[J]`` (values (J,) or (J, n)).

    ``directions`` (P, P), e.g. :func:`patronus.interpret.comoving_directions`: the other
    activations move too, by (value - s_J) * directions[J]; s_J is still set to the value exactly.
    None: they stay (the plain edit)."""
    prototypes = checked_indices("prototypes", prototypes, activations.shape[1])
    count, n = len(prototypes), activations.shape[0]
    if values.shape not in ((count,), (count, n)) or not torch.isfinite(values).all():
        raise ValueError(
            f"values must be finite and ({count},) or ({count}, {n}) for {count} prototypes in "
            f"{n} images, got {tuple(values.shape)}"
        )
    values = values.reshape(count, -1).expand(count, n).to(activations).reshape(-1)
    edits = activations.repeat(count, 1)
    rows = torch.arange(count * n, device=activations.device)
    columns = torch.tensor(prototypes, device=activations.device).repeat_interleave(n)
    if directions is not None:
        size = activations.shape[1]
        if directions.shape != (size, size) or not torch.isfinite(directions).all():
            raise ValueError(
                f"directions must be finite and ({size}, {size}), got {tuple(directions.shape)}"
            )
        rise = values - edits[rows, columns]
        edits = edits + rise[:, None] * directions.to(activations)[columns]
    edits[rows, columns] = values
    return edits


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def per_image_mse(decoded: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Decoded images and the originals, (n, C, H, W) each -> (n,) mean squared error per image."""
    return (decoded - images.to(decoded)).square().flatten(1).mean(1)


@dataclass(frozen=True)
class PrototypeVisualization:
    """J prototypes, each edited into the same n images."""

    prototypes: list[int]
    originals: torch.Tensor  # (n, C, H, W)
    reconstructions: torch.Tensor  # (n, C, H, W) the unedited decodes
    edits: torch.Tensor  # (J, n, C, H, W)
    before: torch.Tensor  # (J, n) s_J of each image before the edit
    edit_activation: torch.Tensor  # (J, n) s_J re-encoded from each edit
    boxes: torch.Tensor  # (J, n, 4) winning patch of prototype J in each edit
    best: torch.Tensor  # (J,) index of the edit whose s_J rose most
    bounds: torch.Tensor  # (J,) the value s_J was set to
    network_evaluations_per_edit: int  # inversion + decoding steps for one edited image
    region: bool = False  # edits confined to the box where J fires (interpret.region)
    prototype_guidance: PrototypeGuidance | None = None  # edits nudged by s_J's gradient

    @property
    def achieved(self) -> torch.Tensor:
        """(J, n) how far each edit moved s_J (re-encoded edit minus the image's own)."""
        return self.edit_activation - self.before

    def _kept(self, values: torch.Tensor) -> torch.Tensor:
        return values[torch.arange(len(self.prototypes)), self.best]

    def best_edits(self) -> torch.Tensor:
        """(J, C, H, W) the kept edit of every prototype."""
        return self._kept(self.edits)

    def best_boxes(self) -> torch.Tensor:
        return self._kept(self.boxes)

    def best_before(self) -> torch.Tensor:
        """(J,) s_J of the kept edit's image before editing."""
        return self._kept(self.before)

    def best_after(self) -> torch.Tensor:
        """(J,) s_J re-encoded from the kept edit."""
        return self._kept(self.edit_activation)

    def reached(self) -> torch.Tensor:
        """(J,) bool: the kept edit's s_J reached the value it was set to."""
        return self.best_after().to(self.bounds.device) >= self.bounds

    def reconstruction_mse(self) -> torch.Tensor:
        """(n,) mean squared error of each image's unedited decode against the image."""
        return per_image_mse(self.reconstructions, self.originals)

    def best_pixel_change(self) -> torch.Tensor:
        """(J, H, W) mean |kept edit - its image's unedited decode| over channels."""
        unedited = self.reconstructions[self.best.to(self.reconstructions.device)]
        return (self.best_edits() - unedited).abs().mean(1)


@torch.no_grad()
def visualize_prototypes(
    model: Patronus,
    inversion: Inversion,
    bounds: torch.Tensor,
    prototypes: Sequence[int] | None = None,
    batch_size: int = 256,
    edit_guidance: float = 1.0,
    directions: torch.Tensor | None = None,
    region: bool = False,
    prototype_guidance: PrototypeGuidance | None = None,
) -> PrototypeVisualization:
    """Edit each prototype's activation to its bound in every image, decode, keep the edit whose
    s_J rose most (re-encoded edit minus the image's own s_J).

    bounds: (P,) upper bounds (see :func:`activation_bounds`). ``edit_guidance``: see
    :meth:`Inversion.decode` (the unedited decodes stay unguided: the reconstructions).
    ``directions`` (P, P): co-moving edits (see :mod:`patronus.interpret.comoving`), which show
    what the model associates with a prototype rather than what it alone encodes; None (the
    default): plain edits. ``region``: decode each edit confined to the box where J fires in the
    original image (see :mod:`patronus.interpret.region`; the change outside is then ~0 by
    construction). ``prototype_guidance``: nudge each edit's late decoding steps along the
    gradient of s_J until it reaches its bound (see :mod:`patronus.interpret.prototype_guidance`:
    the edits then show the prototype layer's pattern as the denoiser renders it); None (the
    default): the model's conditioning alone.
    """
    count = model.num_prototypes
    prototypes = checked_indices(
        "prototypes", range(count) if prototypes is None else prototypes, count, distinct=True
    )
    if bounds.shape != (count,):
        raise ValueError(f"bounds must be ({count},), one per prototype, got {tuple(bounds.shape)}")
    n = inversion.images.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_chunk = max(1, batch_size // n)
    if region:  # the unedited decode's steps (blended in), where each prototype fires (n, P, 4)
        unedited = unedited_latents(model, inversion)
        reconstructions = unedited[-1]
        own_boxes = model.patch_boxes(model.prototype_output(inversion.images).patch_index)
    else:
        reconstructions = inversion.decode(model, inversion.activations)
    edits, scores, boxes = [], [], []
    for chunk in _chunks(prototypes, per_chunk):
        values = bounds[chunk].to(inversion.activations)
        s = edited_activations(inversion.activations, chunk, values, directions)
        columns = torch.tensor(chunk, device=s.device).repeat_interleave(n)
        nudge = None
        if prototype_guidance is not None:
            targets = values.reshape(-1, 1).expand(-1, n).reshape(-1)
            nudge = prototype_guidance_hook(model, prototype_guidance, columns, targets)
        if region:
            chunk_boxes = own_boxes[:, chunk].transpose(0, 1).reshape(-1, 4)
            masks = region_masks(chunk_boxes, inversion.images.shape[-1])
            decoded = decode_in_region(model, inversion, s, masks, edit_guidance, unedited, nudge)
        else:
            x_T = inversion.x_T.repeat(len(chunk), 1, 1, 1)
            decoded = inversion.decode(model, s, x_T, edit_guidance, nudge)
        output = model.prototype_output(decoded)
        columns = columns.to(decoded.device)
        rows = torch.arange(len(columns), device=decoded.device)
        edits.append(decoded.reshape(len(chunk), n, *decoded.shape[1:]))
        scores.append(output.activations[rows, columns].reshape(len(chunk), n))
        boxes.append(model.patch_boxes(output.patch_index[rows, columns].cpu()).reshape(-1, n, 4))
    scores_all = torch.cat(scores)
    before = inversion.activations[:, prototypes].t()
    return PrototypeVisualization(
        prototypes=prototypes,
        originals=inversion.images,
        reconstructions=reconstructions,
        edits=torch.cat(edits),
        before=before,
        edit_activation=scores_all,
        boxes=torch.cat(boxes),
        best=(scores_all - before).argmax(dim=1).cpu(),
        bounds=bounds[prototypes].cpu(),
        network_evaluations_per_edit=2 * inversion.steps,
        region=region,
        prototype_guidance=prototype_guidance,
    )


@dataclass(frozen=True)
class NearestPatches:
    """For each prototype, the k real patches closest to it (the ProtoPNet projection view)."""

    image_index: torch.Tensor  # (P, k) index into the searched images
    distance: torch.Tensor  # (P, k) squared distance, ascending
    boxes: torch.Tensor  # (P, k, 4) pixel boxes of the patches


@torch.no_grad()
def nearest_patches(
    model: Patronus, batches: torch.Tensor | Iterable[torch.Tensor], k: int = 5
) -> NearestPatches:
    """Search images (N, C, H, W), or batches of them (each (B, C, H, W), e.g. a DataLoader's
    images), for every prototype's k nearest patches (each image contributes its closest patch;
    fewer than k when there are fewer images)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(batches, torch.Tensor):
        # iterating a tensor would give single images without a batch axis
        batches = [batches] if len(batches) else []
    best: list[torch.Tensor] = []  # distance, image index, patch index (P, <= k) so far
    offset = 0
    for images in batches:
        output = model.prototype_output(images.to(model.device))
        distance = output.min_distances.t().cpu()  # (P, B)
        image = (torch.arange(images.shape[0]) + offset).expand_as(distance)
        offset += images.shape[0]
        candidates = [distance, image, output.patch_index.t().cpu()]
        if best:
            candidates = [torch.cat(pair, dim=1) for pair in zip(best, candidates, strict=True)]
        order = candidates[0].argsort(dim=1, stable=True)[:, :k]
        best = [t.gather(1, order) for t in candidates]
    if not best:
        raise ValueError("no images to search")
    best_distance, best_image, best_patch = best
    return NearestPatches(best_image, best_distance, model.patch_boxes(best_patch))
