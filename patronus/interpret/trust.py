"""Can a model's explanations be trusted? The bars its edit fidelity must clear, and the one
sentence that says whether it does (the report's headline, the CLI's last line)."""

from __future__ import annotations

TRUSTED = {"median_fidelity": 0.7, "share_reaching_half": 0.8, "inside_outside_ratio": 3.0}
# The median MSE (images in [-1, 1]) above which the unedited decodes no longer reproduce the
# images, so the edits start from other images than those shown. The shipped Fashion-MNIST model
# gives 0.0044 at 50 DDIM steps and 0.020 at 25; at 12 steps 0.12, with a jacket decoded almost
# black and a sweater's logo gone (looked at).
RECONSTRUCTION_BAR = 0.05


def reconstructs(mse: float | None) -> bool:
    """Whether unedited decodes of median MSE ``mse`` reproduce their images (true when it is
    unknown: None, as JSON writes NaN, or NaN)."""
    return mse is None or not mse > RECONSTRUCTION_BAR


def trusted(summary: dict) -> bool:
    """Whether edit fidelity clears every bar of ``TRUSTED`` (a NaN never does) on decodes that
    reproduce their images. Edits confined to their box are local by construction: their
    inside/outside ratio is not judged."""
    bars = dict(TRUSTED)
    if summary.get("confined_to_box"):
        del bars["inside_outside_ratio"]
    faithful = reconstructs(summary.get("reconstruction_mse"))
    return faithful and all(summary[key] >= bar for key, bar in bars.items())


def poor_reconstruction(mse: float) -> str:
    """Why edits of images that the decode does not reproduce (median MSE ``mse``) are not
    judged."""
    return (
        f"the unedited decodes do not reproduce the images (median reconstruction MSE "
        f"{mse:.3g} > {RECONSTRUCTION_BAR}, images in [-1, 1]), so "
        "the edits start from other images than those shown: decode with more DDIM steps "
        "(e.g. 50) before judging them"
    )


GUIDED = (
    "the edits were guided by each prototype's own gradient: they show the pattern that raises "
    "its activation as the denoiser draws it, not how closely the denoiser alone follows its "
    "prototypes (measure that without guidance)"
)


def unjudged_because(summary: dict) -> list[str]:
    """Why the edits cannot be judged as the model's (nothing: they can)."""
    reasons = [GUIDED] if summary.get("prototype_guided") else []
    mse = summary.get("reconstruction_mse")
    return reasons + ([] if mse is None or reconstructs(mse) else [poor_reconstruction(mse)])


def fidelity_headline(summary: dict) -> str:
    """One plain sentence on whether the edits (and so the explanations) can be trusted."""
    unjudged = unjudged_because(summary)
    if unjudged:
        verdict = "; and ".join(unjudged)
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
