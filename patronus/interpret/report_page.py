"""The report's HTML page: one self-contained page (figures embedded as PNG data) written from the
numbers in ``results.json`` and the figures' PNG bytes."""

from __future__ import annotations

import base64
import html
import math

import numpy as np

from patronus.interpret.figures import SHARE_LIMITS
from patronus.interpret.region import REGION_MARGIN
from patronus.interpret.trust import (
    RECONSTRUCTION_BAR,
    TRUSTED,
    trusted,
    unjudged_because,
)


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


ACTIVATION_NOTES = {
    "linear": "This model's activation is s_J = -d_J, minus the squared distance between prototype "
    "J and its closest image patch: every activation is negative, and a value closer to 0 means a "
    "patch more similar to the prototype.",
    "log": "This model's activation is s_J = log((d_J + 1) / (d_J + 1e-4)) of the squared distance "
    "d_J between prototype J and its closest image patch: positive, up to 9.2 for a patch equal "
    "to the prototype, and higher means more similar.",
}


def _extrapolation_reach(values: list[float], reached: list[float]) -> str:
    """One sentence: which values the decoded images follow (to a tenth of the range)."""
    tolerance = 0.1 * (max(values) - min(values))
    missed = [(v, r) for v, r in zip(values, reached, strict=True) if abs(r - v) > tolerance]
    followed = f"the decoded images follow {len(values) - len(missed)} of {len(values)} values"
    if not missed:
        return f"{followed} to within a tenth of the range."
    asked = ", ".join(f"{v:.2f}" for v, _ in missed)
    came = ", ".join(f"{r:.2f}" for _, r in missed)
    return (
        f"{followed} to within a tenth of the range; the others (asked {asked}) come out at "
        f"{came}, so those frames do not show s_J at the value above them."
    )


def _guidance_setting(settings: dict | None) -> str:
    if settings is None:
        return "no"
    return (
        f"yes: nudges of the predicted clean image totalling {settings['strength']} (L2) over "
        f"t <= {settings['late_fraction']} T, smoothing {settings['smoothing']}"
    )


def _fidelity_box(summary: dict) -> str:
    """The headline: can the explanations below be trusted?"""
    unjudged = unjudged_because(summary)
    colour = "#fff4d6" if unjudged else "#e6f4ea" if trusted(summary) else "#fdecea"
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
    mse = summary.get("reconstruction_mse")
    if mse is not None and not math.isnan(mse):
        rows.append(["unedited decodes against their images (median MSE, images in [-1, 1])",
                     f"{mse:.3g}", f"<= {RECONSTRUCTION_BAR}"])  # fmt: skip
    if unjudged:
        verdict = f"Not judged here: {'; and '.join(unjudged)}."
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
    measured = "these guided edits" if summary.get("prototype_guided") else "this model"
    return (
        f'<div style="background:{colour};padding:.5em 1em;border-radius:6px">'
        f"<p><b>Can these explanations be trusted?</b> {verdict}</p>"
        f"{_table(['edit fidelity', measured, 'trusted when'], rows)}</div>"
    )


def report_page(
    png: dict[str, bytes], results: dict, prototypes: list[int], evaluations: dict
) -> str:
    """The HTML of the report: ``png`` the figures by name, ``results`` as in results.json."""
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
    never = results["never_emerging"]
    min_share = results["emergence_min_share"]
    emergence_note = (
        f"<p><b>{len(never)} of {len(prototypes)} prototypes never emerge</b> (prototypes "
        f"{', '.join(map(str, never))}): in none of the {opts['num_images']} images does the "
        f"decoded edit raise s_J by {min_share:.0%} of the requested change, so there is no step "
        "at which J appears. That says the model does not follow these prototypes' edits, not "
        "that they emerge late.</p>"
        if never
        else "<p>Every prototype emerges in at least one image.</p>"
    )
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
        "it, not what the denoiser alone draws for a higher s_J. Extrapolation and consistency "
        "below are guided the same way; emergence is traced with the model's conditioning alone "
        "(guided, it would show when the guidance starts, not when the denoiser draws J)."
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
    guided_note = (
        " Guided by the prototype's gradient towards the value s_J was set to, as the gallery's "
        "edits are."
        if opts["prototype_guidance"]
        else ""
    )
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
predicted clean image of every step is encoded. Curves show s_J(edit) - s_J(reference) as a share
of the requested change (1: all of it; one thin line per image, the median thick) against the
timestep, from t = 999 (pure noise, left) to 0 (the image, right); the axis stops at
{SHARE_LIMITS[0]} and {SHARE_LIMITS[1]}, which the blurry predictions of the first steps often
leave. A prototype emerges at the first step from which this gap stays above
{opts["emergence_fraction"]:.0%} of its final value (red lines); it does not emerge where the final
gap is below {min_share:.0%} of the requested change (dashed).</p>
{emergence_note}
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
no real image has; the other activations stay. Under each value, "is" gives s_J re-encoded from
the decoded image: {_extrapolation_reach(values, results["extrapolation_reached"])}
{guided_note}</p>
{_img(png["extrapolation"], "extrapolation")}
<h2>Consistency: prototype {results["strongest_prototype"]} edited into every image</h2>
<p class="note">The box is the prototype's winning patch in each edit, the title its re-encoded
activation.{guided_note}</p>
{_img(png["consistency"], "consistency")}
</body></html>
"""
