"""Can a model's explanations be trusted? The bars its edit fidelity must clear, and the one
sentence that says whether it does (the report's headline, the CLI's last line)."""

from __future__ import annotations

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
