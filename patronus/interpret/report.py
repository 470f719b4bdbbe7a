"""The interpretability report: every analysis of a trained model as one self-contained HTML page
(figures embedded as PNG data), plus the figures as files and the raw numbers (JSON and NPZ)."""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from patronus.diffusion.samplers import DEFAULT_SAMPLER
from patronus.interpret import analyses, figures
from patronus.interpret.fidelity import EditFidelity, edit_fidelity
from patronus.interpret.prototype_guidance import PrototypeGuidance
from patronus.interpret.region import REGION_MARGIN
from patronus.interpret.what import (
    activation_bounds,
    invert_images,
    nearest_patches,
    visualize_prototypes,
)
from patronus.interpret.when import trace_emergence
from patronus.interpret.where import localize
from patronus.models import Patronus


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


Log = Callable[[str], None]


@dataclass
class ReportInputs:
    """Images the report works on (all (N, C, H, W) in [-1, 1])."""

    images: torch.Tensor  # edited, traced and reconstructed (test images)
    reference: torch.Tensor  # for the activation bounds (a seeded sample of training images)
    pool: torch.Tensor  # searched for the nearest real patches
    info: dict = field(default_factory=dict)  # run facts shown in the report


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}img{max-width:100%}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}
.note{color:#555;font-size:.9em}
"""


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
    path = out_dir / "what_where.png"
    figures.gallery_figure(vis, edit_maps, path)
    figures.nearest_patches_figure(
        nearest, inputs.pool, prototypes, out_dir / "nearest_patches.png"
    )
    fidelity = edit_fidelity(vis)
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
        log(fidelity_headline(numbers["edit_fidelity"]))
    return path


def _write_results(out_dir: Path, stem: str, numbers: dict, arrays: dict[str, torch.Tensor]):
    """``stem.json`` (the numbers) and ``stem.npz`` (the arrays, compressed)."""
    (out_dir / f"{stem}.json").write_text(json.dumps(numbers, indent=2) + "\n")
    np.savez_compressed(out_dir / f"{stem}.npz", **{k: v.cpu().numpy() for k, v in arrays.items()})


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


TRUSTED = {"median_fidelity": 0.7, "share_reaching_half": 0.8, "inside_outside_ratio": 3.0}


def trusted(summary: dict) -> bool:
    """Whether edit fidelity clears every bar of ``TRUSTED`` (a NaN never does). Edits confined
    to their box are local by construction: their inside/outside ratio is not judged."""
    bars = dict(TRUSTED)
    if summary.get("confined_to_box"):
        del bars["inside_outside_ratio"]
    return all(summary[key] >= bar for key, bar in bars.items())


GUIDED = (
    "the edits were guided by each prototype's own gradient: they show the pattern that raises "
    "its activation as the denoiser draws it, not how closely the denoiser alone follows its "
    "prototypes (measure that without guidance)"
)


def fidelity_headline(summary: dict) -> str:
    """One plain sentence on whether the edits (and so the explanations) can be trusted."""
    if summary.get("prototype_guided"):
        verdict = GUIDED
    elif trusted(summary):
        verdict = "the decoded edits deliver what they ask for, where the prototype fires"
    else:
        verdict = "the model follows its prototypes only weakly: read the edits with care"
    locality = (
        "edits confined to the prototype's box (decoded in its region)"
        if summary.get("confined_to_box")
        else f"pixels change {summary['inside_outside_ratio']:.1f}x as much inside the "
        "prototype's box as outside"
    )
    return (
        f"edit fidelity: median {summary['median_fidelity']:.2f} of the requested activation "
        f"change is delivered, {summary['share_reaching_half']:.0%} of "
        f"{summary['edits_with_a_request']} edits reach half of their request, {locality}: "
        f"{verdict}"
    )


def _emergence_arrays(emergence, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        "timesteps": emergence.timesteps,
        f"{prefix}edit": emergence.edit,
        f"{prefix}reference": emergence.reference,
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
    figures.emergence_figure(emergence, path)
    numbers = {
        "prototypes": prototypes,
        "timesteps": emergence.timesteps.tolist(),
        "emergence_t": emergence.emergence_t.tolist(),
        "mean_gap": emergence.gap.mean(2).t().tolist(),
    }
    _write_results(out_dir, "emergence", numbers, _emergence_arrays(emergence))
    return path


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
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    count = len(options.prototypes or range(model.num_prototypes))
    images = min(options.num_images, len(inputs.images))
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
        extrapolated = analyses.extrapolation(
            model, inversion, strongest, values, edit_guidance=options.edit_guidance
        )
        consistent = analyses.consistency(
            model, inversion, strongest, float(bounds[strongest]), options.edit_guidance
        )
    finally:
        progress.close()
    if log is not None:
        log("drawing the figures")

    png = {
        "what": figures.gallery_figure(vis, edit_maps, out_dir / "what_where.png"),
        "nearest": figures.nearest_patches_figure(
            nearest, inputs.pool, prototypes, out_dir / "nearest_patches.png"
        ),
        "when": figures.emergence_figure(emergence, out_dir / "when.png"),
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
            titles=[[f"{float(v):.2f}" for v in values]],
        ),
        "consistency": figures.grid_figure(
            [images, consistent.edits],
            ["original", f"p{strongest} set to {float(bounds[strongest]):.2f}"],
            out_dir / "consistency.png",
            [None, consistent.boxes],
            [None, [f"s_J {float(v):.2f}" for v in consistent.activation]],
        ),
    }
    wall = time.perf_counter() - started
    emerged = emergence.emergence_t
    median_t = [
        int(emerged[j][emerged[j] >= 0].float().median()) if (emerged[j] >= 0).any() else None
        for j in range(len(prototypes))
    ]
    edits = len(prototypes) * images.shape[0]
    fidelity = edit_fidelity(vis)
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
        "reconstruction_mse": mse.tolist(),
        "strongest_prototype": strongest,
        "extrapolation_values": values.tolist(),
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
    page = _page(png, results, prototypes, evaluations)
    path = out_dir / "report.html"
    path.write_text(page)
    if log is not None:
        log(fidelity_headline(results["edit_fidelity"]))
    return path


ACTIVATION_NOTES = {
    "linear": "This model's activation is s_J = -d_J, minus the squared distance between prototype "
    "J and its closest image patch: every activation is negative, and a value closer to 0 means a "
    "patch more similar to the prototype.",
    "log": "This model's activation is s_J = log((d_J + 1) / (d_J + 1e-4)) of the squared distance "
    "d_J between prototype J and its closest image patch: positive, up to 9.2 for a patch equal "
    "to the prototype, and higher means more similar.",
}


def _guidance_setting(settings: dict | None) -> str:
    if settings is None:
        return "no"
    return (
        f"yes: nudges of the predicted clean image totalling {settings['strength']} (L2) over "
        f"t <= {settings['late_fraction']} T, smoothing {settings['smoothing']}"
    )


def _fidelity_box(summary: dict) -> str:
    """The headline: can the explanations below be trusted?"""
    guided = bool(summary.get("prototype_guided"))
    colour = "#fff4d6" if guided else "#e6f4ea" if trusted(summary) else "#fdecea"
    rows = [
        ["median edit fidelity (delivered / requested activation change; 1 = all of it)",
         f"{summary['median_fidelity']:.2f}", f">= {TRUSTED['median_fidelity']}"],
        ["edits reaching half of their request",
         f"{summary['share_reaching_half']:.0%} of {summary['edits_with_a_request']}",
         f">= {TRUSTED['share_reaching_half']:.0%}"],
        ["pixel change inside the prototype's box / outside it",
         f"{summary['inside_outside_ratio']:.1f}x",
         "not judged: edits decoded confined to the box"
         if summary.get("confined_to_box") else f">= {TRUSTED['inside_outside_ratio']:.0f}x"],
    ]  # fmt: skip
    if guided:
        verdict = f"Not judged here: {GUIDED}."
    elif trusted(summary):
        verdict = (
            "The edits deliver what they ask for, where the prototype fires: the explanations "
            "below show what the model uses."
        )
    else:
        verdict = (
            "This model follows its prototypes only weakly: the edits below change the image "
            "less than they ask, or not where the prototype is. Read them with care."
        )
    measured = "these guided edits" if guided else "this model"
    return (
        f'<div style="background:{colour};padding:.5em 1em;border-radius:6px">'
        f"<p><b>Can these explanations be trusted?</b> {verdict}</p>"
        f"{_table(['edit fidelity', measured, 'trusted when'], rows)}</div>"
    )


def _page(png, results, prototypes, evaluations) -> str:
    info = results["info"]
    rows = [
        [
            p,
            results["best_image"][i],
            f"{results['best_before'][i]:.2f}",
            f"{results['best_after'][i]:.2f}",
            f"{b:.2f}",
            f"{results['best_share_of_request'][i]:.0%}",
            "yes" if results["best_reached_bound"][i] else "no",
            f"{results['fidelity_per_prototype'][i]:.2f}",
            results["emergence_median_t"][i]
            if results["emergence_median_t"][i] is not None
            else "-",
            f"{results['emergence_fraction_of_images'][i]:.0%}",
        ]
        for i, (p, b) in enumerate(zip(prototypes, results["bounds"], strict=True))
    ]
    short = [p for p, ok in zip(prototypes, results["best_reached_bound"], strict=True) if not ok]
    shortfall = (
        f"<p><b>{len(short)} of {len(prototypes)} prototypes: no edit reached the value s_J was "
        f"set to</b> (red titles; prototypes {', '.join(map(str, short))}). Their rows show the "
        "largest change the decoder made, which may be small.</p>"
        if short
        else "<p>Every prototype's kept edit reached the value s_J was set to.</p>"
    )
    opts = results["options"]
    confinement = (
        " The edits were decoded confined to the box where J fires in the image (widened by "
        f"{REGION_MARGIN} pixels, soft edge): outside it every edit is the unedited decode. They "
        "show what the model draws there; their inside/outside change ratio says where they were "
        "allowed to change, not where the model would have changed the image."
        if opts["edit_region"]
        else ""
    ) + (
        " The edits were guided by the prototype's own gradient: during the late decoding steps "
        "each predicted clean image was nudged towards a higher s_J until it reached the value "
        "asked for. They show the pattern the prototype layer responds to as the denoiser draws "
        "it, not what the denoiser alone draws for a higher s_J. Only this gallery is guided: "
        "emergence, extrapolation and consistency below decode with the model's conditioning "
        "alone."
        if opts["prototype_guidance"]
        else ""
    )
    bound_rule = (
        "the global maximum over the reference set (the original's rule)"
        if opts["global_max"]
        else f"the {opts['quantile']:.0%} quantile of its activations over "
        "a seeded sample of training images"
    )
    facts = _table(
        ["fact", "value"],
        [[k, v] for k, v in info.items()]
        + [
            ["respaced DDIM steps", opts["steps"]],
            ["prototype guidance scale (inversion and decoding)", results["guidance_scale"]],
            ["edit guidance (edits decoded as own + w (edit - own))", opts["edit_guidance"]],
            [
                "gallery edits confined to the prototype's box (decoded in its region)",
                opts["edit_region"],
            ],
            [
                "gallery edits guided by the prototype's gradient (interpret.prototype_guidance)",
                _guidance_setting(opts["prototype_guidance"]),
            ],
            [
                "network evaluations per edit (inversion + decoding)",
                f"{evaluations['per_edit']} (the original: {evaluations['original_per_edit']})",
            ],
            ["edits decoded", evaluations["edits"]],
            [
                "network calls (batched) / image evaluations, whole report",
                f"{evaluations['batched_network_calls']} / {evaluations['image_evaluations']}",
            ],
            ["report wall time", f"{results['wall_s']:.1f} s"],
        ],
    )
    values = results["extrapolation_values"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Patronus report</title>
<style>{STYLE}</style></head><body>
<h1>Patronus interpretability report</h1>
{_fidelity_box(results["edit_fidelity"])}
{facts}
<p class="note">{ACTIVATION_NOTES[results["activation"]]}</p>
<h2>What and where: prototype visualisations</h2>
<p class="note">Each prototype J is edited into {opts["num_images"]} test images: invert each image
with its own activations, set s_J to {
        bound_rule
    }, decode from the same x_T with the inversion's settings (so an unedited decode is the
reconstruction), re-encode. Each row keeps the image whose s_J rose most and shows it with s_J
before the edit, the edit with J's winning patch boxed (its exact receptive field) and s_J
re-encoded from it against the value it was set to, the patch, what the edit changed in pixels
(|edit - unedited decode|, one colour scale for all rows: a dark map means the edit changed
little), and J's similarity over the edit.{confinement}</p>
{shortfall}
{_img(png["what"], "prototype gallery")}
{
        _table(
            [
                "prototype",
                "kept image",
                "s_J before",
                "s_J after edit",
                "set to",
                "share of the requested change",
                "reached",
                "median fidelity (all its edits)",
                "median emergence t",
                "emerges in",
            ],
            rows,
        )
    }
<h2>What, second view: the nearest real patches</h2>
<p class="note">For each prototype, the training patches closest to it in feature space
(one per image), independent of the diffusion model.</p>
{_img(png["nearest"], "nearest patches")}
<h2>When: emergence during denoising</h2>
<p class="note">While decoding each edit and the unedited reference from the same x_T, the
predicted clean image of every step is encoded. Curves show s_J(edit) - s_J(reference) against the
timestep, from t = 999 (pure noise, left) to 0 (the image, right). A prototype emerges at the
first step from which this gap stays above {opts["emergence_fraction"]:.0%} of its final value (red
lines); it does not emerge where the final gap is below 10% of the requested change.</p>
{_img(png["when"], "emergence curves")}
<h2>Reconstruction</h2>
<p class="note">DDIM inversion then decoding; mean MSE
{float(np.mean(results["reconstruction_mse"])):.4f}.</p>
{_img(png["reconstruction"], "reconstructions")}
<h2>Variations (same activations, new x_T)</h2>
<p class="note">Sampled from fresh noise like any sample (predicted x0 clipped to [-1, 1]).</p>
{_img(png["variations"], "variations")}
<h2>Interpolation (activations linear, x_T spherical)</h2>
<p class="note">From test image 0 (left: its reconstruction) to test image 1 (right).</p>
{_img(png["interpolation"], "interpolation")}
<h2>Extrapolation of prototype {results["strongest_prototype"]}</h2>
<p class="note">Test image 0 decoded from its own x_T with s_{results["strongest_prototype"]} set
to each value above the frame: from its lowest value over the reference set
({values[0]:.2f}) to half the observed range beyond its edit bound ({values[-1]:.2f}), values
no real image has; the other activations stay.</p>
{_img(png["extrapolation"], "extrapolation")}
<h2>Consistency: prototype {results["strongest_prototype"]} edited into every image</h2>
<p class="note">The box is the prototype's winning patch in each edit, the title its re-encoded
activation.</p>
{_img(png["consistency"], "consistency")}
</body></html>
"""
