"""The interpretability report: every analysis of a trained model run and written as one
self-contained HTML page (:mod:`patronus.interpret.report_page`), the figures as files and the raw
numbers (JSON and NPZ)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from patronus.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS
from patronus.interpret import analyses, figures
from patronus.interpret.fidelity import EditFidelity, edit_fidelity
from patronus.interpret.prototype_guidance import PrototypeGuidance
from patronus.interpret.report_page import report_page
from patronus.interpret.trust import fidelity_headline, poor_reconstruction, reconstructs
from patronus.interpret.what import (
    activation_bounds,
    invert_images,
    nearest_patches,
    visualize_prototypes,
)
from patronus.interpret.when import Emergence, trace_emergence
from patronus.interpret.where import localize
from patronus.models import Patronus
from patronus.utils.json_files import finite_json


@dataclass(frozen=True)
class ReportOptions:
    num_images: int = 8  # images each prototype is edited into
    steps: int = 50  # respaced DDIM steps for inversion and decoding
    quantile: float = 0.99  # per-prototype bound: this quantile of the reference activations
    global_max: bool = False  # the original's bound: one global maximum for all prototypes
    prototypes: tuple[int, ...] | None = None  # default: all
    emergence_fraction: float = 0.5
    nearest_k: int = 6
    seed: int = 0
    batch_size: int = 256
    progress: bool = False  # a progress bar over the network calls on stderr
    guidance_scale: float | None = None  # prototype guidance of inversion and decoding (None:
    # the model's recommended scale)
    edit_guidance: float = 1.0  # edits decoded as own + w (edit - own): w times the edit's effect
    edit_region: bool = False  # the gallery's edits decoded confined to the box where J fires
    # the gallery's edits nudged along each prototype's gradient (None: the conditioning alone)
    prototype_guidance: PrototypeGuidance | None = None
    # sampler of the variations (fresh noise); inversions and their decodes are DDIM
    sampler: str = DEFAULT_SAMPLER

    def __post_init__(self) -> None:
        """Checked before any work: a bad option would otherwise fail minutes into a report."""
        counts = {"num_images": self.num_images, "steps": self.steps,
                  "nearest_k": self.nearest_k, "batch_size": self.batch_size}  # fmt: skip
        for name, count in counts.items():
            if count < 1:
                raise ValueError(f"{name} must be >= 1, got {count}")
        shares = {"quantile": self.quantile, "emergence_fraction": self.emergence_fraction}
        for name, share in shares.items():
            if not 0.0 < share <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {share}")
        scales = {"edit_guidance": self.edit_guidance, "guidance_scale": self.guidance_scale}
        for name, scale in scales.items():
            if scale is not None and not math.isfinite(scale):
                raise ValueError(f"{name} must be finite, got {scale}")
        if not self.edit_guidance > 0:  # 0 decodes the unedited image, below 0 the opposite edit
            raise ValueError(
                f"edit_guidance must be > 0 (1: plain edits), got {self.edit_guidance}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")


Log = Callable[[str], None]


@dataclass
class ReportInputs:
    """Images the report works on (all (N, C, H, W) in [-1, 1])."""

    images: torch.Tensor  # edited, traced and reconstructed (test images)
    reference: torch.Tensor  # for the activation bounds (a seeded sample of training images)
    pool: torch.Tensor  # searched for the nearest real patches
    info: dict = field(default_factory=dict)  # run facts shown in the report


def _prepare(model: Patronus, inputs: ReportInputs, options: ReportOptions, progress: _Progress):
    """(prototypes, reference activations (N, P), bounds (P,), inversion of the images)."""
    model.eval()
    device = model.device
    prototypes = list(options.prototypes or range(model.num_prototypes))
    images = inputs.images[: options.num_images].to(device)
    progress.stage(f"encoding {len(inputs.reference)} reference images for the activation bounds")
    reference = model.encode(inputs.reference.to(device))
    bounds = activation_bounds(reference, options.quantile, options.global_max)
    progress.stage(f"inverting {len(images)} images ({options.steps} DDIM steps)")
    inversion = invert_images(model, images, options.steps, options.guidance_scale)
    return prototypes, reference, bounds, inversion


def _what(model: Patronus, inputs: ReportInputs, options: ReportOptions, setup, progress):
    prototypes, _, bounds, inversion = setup
    n = inversion.images.shape[0]
    progress.stage(f"what: editing {len(prototypes)} prototypes into {n} images")
    vis = visualize_prototypes(
        model, inversion, bounds, prototypes, options.batch_size, options.edit_guidance,
        region=options.edit_region, prototype_guidance=options.prototype_guidance,
    )  # fmt: skip
    located = localize(model, vis.best_edits())
    edit_maps = located.similarity[torch.arange(len(prototypes)), torch.tensor(prototypes)]
    progress.stage(f"what: the nearest patches among {len(inputs.pool)} training images")
    nearest = nearest_patches(model, inputs.pool.split(options.batch_size), options.nearest_k)
    return vis, nearest, edit_maps


def _visualization_calls(options: ReportOptions, prototypes: int, images: int) -> int:
    """Network calls of inversion + the unedited decode + the edits' decodes (in chunks)."""
    chunks = math.ceil(prototypes / max(1, options.batch_size // images))
    return options.steps * (2 + chunks)


class _Progress:
    """Counts the UNet's batched calls and the images they evaluate (a forward hook), advances a
    progress bar over the expected calls, and writes stage messages."""

    def __init__(self, model: Patronus, total: int, options: ReportOptions, log: Log | None):
        self.calls = 0
        self.images = 0
        self.log = log
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=total, desc="network calls", unit="call", disable=not options.progress,
            dynamic_ncols=True,
        )  # fmt: skip
        self.handle = model.unet.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1
        self.images += int(inputs[0].shape[0])
        self.bar.update(1)

    def stage(self, message: str) -> None:
        if self.log is not None:
            self.bar.clear()
            self.log(f"[{time.perf_counter() - self.started:6.1f} s] {message}")
            self.bar.refresh()

    def close(self) -> None:
        self.handle.remove()
        self.bar.close()


@torch.no_grad()
def write_visualization(
    model: Patronus,
    inputs: ReportInputs,
    out_dir: Path,
    options: ReportOptions = ReportOptions(),
    log: Log | None = None,
) -> Path:
    """What + where: ``out_dir/what_where.png``, ``nearest_patches.png``, ``visualize.json`` and
    ``visualize.npz``; returns the gallery's path. ``log`` receives stage messages."""
    count = len(options.prototypes or range(model.num_prototypes))
    images = min(options.num_images, len(inputs.images))
    progress = _Progress(model, _visualization_calls(options, count, images), options, log)
    try:
        setup = _prepare(model, inputs, options, progress)
        prototypes = setup[0]
        vis, nearest, edit_maps = _what(model, inputs, options, setup, progress)
    finally:
        progress.close()
    fidelity = edit_fidelity(vis)
    headline = fidelity_headline(fidelity.summary())
    path = out_dir / "what_where.png"
    figures.gallery_figure(vis, edit_maps, path, note=headline)
    figures.nearest_patches_figure(
        nearest, inputs.pool, prototypes, out_dir / "nearest_patches.png"
    )
    guidance = options.prototype_guidance
    numbers = {
        "prototypes": prototypes,
        **_kept_edit_numbers(vis),
        **_fidelity_numbers(fidelity),
        "reconstruction_mse": vis.reconstruction_mse().tolist(),
        "prototype_guidance": guidance and guidance.settings(),
    }
    arrays = {**_edit_arrays(vis), **_nearest_arrays(nearest), **_fidelity_arrays(fidelity)}
    _write_results(out_dir, "visualize", numbers, arrays)
    if log is not None:
        log(headline)
    return path


def _write_results(out_dir: Path, stem: str, numbers: dict, arrays: dict[str, torch.Tensor]):
    """``stem.json`` (the numbers) and ``stem.npz`` (the arrays, compressed)."""
    (out_dir / f"{stem}.json").write_text(finite_json(numbers) + "\n")
    named: dict[str, Any] = {name: value.cpu().numpy() for name, value in arrays.items()}
    np.savez_compressed(out_dir / f"{stem}.npz", **named)


def _edit_arrays(vis) -> dict[str, torch.Tensor]:
    return {"edits": vis.edits, "boxes": vis.boxes, "edit_activation": vis.edit_activation,
            "before": vis.before}  # fmt: skip


def _nearest_arrays(nearest) -> dict[str, torch.Tensor]:
    return {"nearest_image": nearest.image_index, "nearest_distance": nearest.distance,
            "nearest_boxes": nearest.boxes}  # fmt: skip


def _fidelity_numbers(fidelity: EditFidelity) -> dict:
    return {
        "edit_fidelity": fidelity.summary(),
        "fidelity_per_prototype": fidelity.per_prototype().tolist(),
    }


def _fidelity_arrays(fidelity: EditFidelity) -> dict[str, torch.Tensor]:
    return {"fidelity_raw": fidelity.raw, "change_inside": fidelity.inside,
            "change_outside": fidelity.outside}  # fmt: skip


def _emergence_arrays(emergence, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        "timesteps": emergence.timesteps,
        f"{prefix}edit": emergence.edit,
        f"{prefix}reference": emergence.reference,
        f"{prefix}requested": emergence.requested,
        "emergence_t": emergence.emergence_t,
    }


def _kept_edit_numbers(vis) -> dict[str, list]:
    """What the gallery shows of each prototype's kept edit, as numbers."""
    before, after = vis.best_before(), vis.best_after()
    requested = vis.bounds.to(before) - before
    return {
        "bounds": vis.bounds.tolist(),
        "best_image": vis.best.tolist(),
        "best_before": before.tolist(),
        "best_after": after.tolist(),
        "best_share_of_request": ((after - before) / requested).tolist(),
        "best_reached_bound": vis.reached().tolist(),
        "best_boxes": vis.best_boxes().tolist(),
    }


@torch.no_grad()
def write_emergence(
    model: Patronus,
    inputs: ReportInputs,
    out_dir: Path,
    options: ReportOptions = ReportOptions(),
    log: Log | None = None,
) -> Path:
    """When: ``out_dir/when.png``, ``emergence.json`` and ``emergence.npz``; returns the figure.
    ``log`` receives stage messages."""
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(model, 2 * options.steps, options, log)
    try:
        prototypes, _, bounds, inversion = _prepare(model, inputs, options, progress)
        progress.stage(
            f"when: tracing {len(prototypes)} prototypes in {len(inversion.images)} images"
        )
        emergence = trace_emergence(
            model, inversion, prototypes, bounds[prototypes], options.emergence_fraction,
            edit_guidance=options.edit_guidance,
        )  # fmt: skip
    finally:
        progress.close()
    path = out_dir / "when.png"
    figures.emergence_figure(emergence, path, note=emergence_summary(emergence))
    numbers = {
        "prototypes": prototypes,
        "timesteps": emergence.timesteps.tolist(),
        "emergence_t": emergence.emergence_t.tolist(),
        "mean_gap": emergence.gap.mean(2).t().tolist(),
        "never_emerging": emergence.never_emerging(),
        "reconstruction_mse": None
        if emergence.reconstruction_mse is None
        else emergence.reconstruction_mse.tolist(),
    }
    _write_results(out_dir, "emergence", numbers, _emergence_arrays(emergence))
    if log is not None:
        log(emergence_summary(emergence))
    return path


def emergence_summary(emergence: Emergence) -> str:
    """One sentence: how many prototypes emerge, and which never do."""
    count, images = emergence.emergence_t.shape
    never = emergence.never_emerging()
    named = (
        f"; never: {', '.join(map(str, never))} (in no image does the edit raise s_J by "
        f"{emergence.min_share:.0%} of the requested change)"
        if never
        else ""
    )
    caution = ""
    if emergence.reconstruction_mse is not None:
        mse = float(emergence.reconstruction_mse.median())
        caution = "" if reconstructs(mse) else f"; but {poor_reconstruction(mse)}"
    return (
        f"emergence: {count - len(never)} of {count} prototypes emerge in at least one of "
        f"{images} images{named}{caution}"
    )


@torch.no_grad()
def build_report(
    model: Patronus,
    inputs: ReportInputs,
    out_dir: Path,
    options: ReportOptions = ReportOptions(),
    log: Log | None = None,
) -> Path:
    """Run every analysis and write ``out_dir/report.html`` (+ PNGs, results.json, results.npz).
    ``log`` receives stage messages; ``options.progress`` shows a bar over the network calls."""
    count = len(options.prototypes or range(model.num_prototypes))
    images = min(options.num_images, len(inputs.images))
    if images < 2:
        raise ValueError(
            f"the report interpolates between two images: it needs 2 or more, got {images} "
            f"(num_images={options.num_images}, {len(inputs.images)} given)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # + emergence, variations, interpolation, extrapolation, consistency (the reconstructions
    # are the visualisation's unedited decodes)
    total = _visualization_calls(options, count, images) + 5 * options.steps
    progress = _Progress(model, total, options, log)
    try:
        setup = _prepare(model, inputs, options, progress)
        prototypes, reference, bounds, inversion = setup
        images = inversion.images
        vis, nearest, edit_maps = _what(model, inputs, options, setup, progress)
        progress.stage(f"when: tracing {len(prototypes)} prototypes in {len(images)} images")
        emergence = trace_emergence(
            model, inversion, prototypes, bounds[prototypes], options.emergence_fraction,
            edit_guidance=options.edit_guidance,
        )  # fmt: skip
        progress.stage("analyses: reconstruction, variations, interpolation")
        reconstructed, mse = vis.reconstructions, vis.reconstruction_mse()
        generator = torch.Generator(model.device).manual_seed(options.seed)
        varied = analyses.variations(model, inversion, 4, generator, options.sampler)
        interpolated = analyses.interpolation(model, inversion, 0, 1, 8)
        strongest = prototypes[int(vis.best_after().sub(vis.best_before()).argmax())]
        # from its lowest observed activation to half the observed range beyond the bound
        low, high = float(reference[:, strongest].min()), float(bounds[strongest])
        values = torch.linspace(low, high + 0.5 * (high - low), 8)
        progress.stage(f"analyses: extrapolation and consistency of prototype {strongest}")
        edit_guidance, prototype_guidance = options.edit_guidance, options.prototype_guidance
        extrapolated = analyses.extrapolation(
            model, inversion, strongest, values,
            edit_guidance=edit_guidance, prototype_guidance=prototype_guidance,
        )  # fmt: skip
        extrapolation_reached = model.encode(extrapolated)[:, strongest].cpu()
        consistent = analyses.consistency(
            model, inversion, strongest, float(bounds[strongest]),
            edit_guidance=edit_guidance, prototype_guidance=prototype_guidance,
        )  # fmt: skip
    finally:
        progress.close()
    if log is not None:
        log("drawing the figures")
    fidelity = edit_fidelity(vis)
    headline, emerged_sentence = fidelity_headline(fidelity.summary()), emergence_summary(emergence)
    png = {
        "what": figures.gallery_figure(vis, edit_maps, out_dir / "what_where.png", note=headline),
        "nearest": figures.nearest_patches_figure(
            nearest, inputs.pool, prototypes, out_dir / "nearest_patches.png"
        ),
        "when": figures.emergence_figure(emergence, out_dir / "when.png", note=emerged_sentence),
        "reconstruction": figures.grid_figure(
            [images, reconstructed], ["original", "decoded"], out_dir / "reconstruction.png"
        ),
        "variations": figures.grid_figure(
            [images[:4], *varied[:4].transpose(0, 1)],
            ["original", *[f"x_T #{i}" for i in range(4)]],
            out_dir / "variations.png",
        ),
        "interpolation": figures.grid_figure(
            [interpolated], ["image 0 -> 1"], out_dir / "interpolation.png"
        ),
        "extrapolation": figures.grid_figure(
            [extrapolated],
            [f"image 0, s_{strongest} set to"],
            out_dir / "extrapolation.png",
            titles=[
                [
                    f"{float(v):.2f}\nis {float(r):.2f}"
                    for v, r in zip(values, extrapolation_reached, strict=True)
                ]
            ],
            note=headline,
        ),
        "consistency": figures.grid_figure(
            [images, consistent.edits],
            ["original", f"p{strongest} set to {float(bounds[strongest]):.2f}"],
            out_dir / "consistency.png",
            [None, consistent.boxes],
            [None, [f"s_J {float(v):.2f}" for v in consistent.activation]],
            note=headline,
        ),
    }
    wall = time.perf_counter() - started
    emerged = emergence.emergence_t
    median_t = [
        int(emerged[j][emerged[j] >= 0].float().median()) if (emerged[j] >= 0).any() else None
        for j in range(len(prototypes))
    ]
    edits = len(prototypes) * images.shape[0]
    evaluations = {
        "per_edit": vis.network_evaluations_per_edit,
        "original_per_edit": 2000,
        "edits": edits,
        "batched_network_calls": progress.calls,
        "image_evaluations": progress.images,
    }
    results = {
        "options": asdict(options),
        "info": inputs.info,
        "activation": model.config.activation,
        "guidance_scale": inversion.guidance_scale,
        "prototypes": prototypes,
        **_kept_edit_numbers(vis),
        **_fidelity_numbers(fidelity),
        "emergence_median_t": median_t,
        "emergence_fraction_of_images": (emerged >= 0).float().mean(1).tolist(),
        "never_emerging": emergence.never_emerging(),
        "emergence_min_share": emergence.min_share,
        "reconstruction_mse": mse.tolist(),
        "strongest_prototype": strongest,
        "extrapolation_values": values.tolist(),
        "extrapolation_reached": extrapolation_reached.tolist(),
        "consistency_reached": consistent.activation.cpu().tolist(),
        "network_evaluations": evaluations,
        "wall_s": wall,
    }
    arrays = {
        **_edit_arrays(vis),
        **_fidelity_arrays(fidelity),
        **_emergence_arrays(emergence, prefix="emergence_"),
        **_nearest_arrays(nearest),
    }
    _write_results(out_dir, "results", results, arrays)
    page = report_page(png, results, prototypes, evaluations)
    path = out_dir / "report.html"
    path.write_text(page)
    if log is not None:
        log(emerged_sentence)
        log(headline)
    return path
