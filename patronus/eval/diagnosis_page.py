"""The shortcut diagnosis written out: ``diagnosis.json`` and ``diagnosis.html`` (a verdict line,
the evidence per attribute, the AUROC matrix as a heat map)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import torch

from patronus.eval.diagnosis import Diagnosis, Suspect


def verdict(suspect: Suspect) -> str:
    """One phrase a reader can act on."""
    if not suspect.judged:
        return "not judged: too few conflicting examples"
    if not suspect.flagged:
        if suspect.encodes_other:
            return "prototypes encode it, but the data does not correlate it with the target"
        return "no shortcut"
    result = suspect.intervention
    if result is None:
        return "shortcut (statistic); intervention not run"
    if result.confirmed is None:
        realised = f"edits realised {result.realised:.2f} of the request"
        return f"shortcut (statistic); intervention underpowered ({realised})"
    if result.confirmed:
        return "shortcut, confirmed by intervention"
    return "shortcut (statistic); intervention did not confirm"


def _number(value: float | None, digits: int = 2) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"


def _row(suspect: Suspect) -> str:
    result = suspect.intervention
    cells = [
        html.escape(suspect.attribute),
        f"{suspect.phi:+.2f}",
        str(suspect.conflicting),
        str(suspect.decorrelated),
        _number(suspect.target_auroc),
        _number(suspect.other_auroc),
        _number(suspect.conflicting_target_auroc),
        _number(result.realised) if result else "",
        _number(result.other_effect, 3) if result else "",
        _number(max(result.null_effects, default=None), 3) if result else "",
        html.escape(verdict(suspect)),
    ]
    style = ' style="background:#fde2e2"' if suspect.flagged else ""
    return f"<tr{style}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _table(rows: str, target: str) -> str:
    return f"""<table border="1" cellpadding="3" style="border-collapse:collapse;font-size:0.9em">
<tr><th>attribute</th><th>phi</th><th>conflicting</th><th>decorrelated</th>
<th>AUROC {target}</th><th>AUROC other</th><th>AUROC {target} on conflicting</th>
<th>edits realised</th><th>effect</th><th>largest null effect</th><th>verdict</th></tr>
{rows}</table>"""


def write_diagnosis(diagnosis: Diagnosis, folder: Path) -> Path:
    """Write ``diagnosis.json``, ``auroc_matrix.png`` and ``diagnosis.html`` into ``folder``."""
    from patronus.utils.plotting import pyplot, save_figure

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diagnosis.json").write_text(diagnosis.to_json() + "\n")
    plt = pyplot()
    matrix = torch.tensor(diagnosis.auroc)
    figure, axis = plt.subplots(figsize=(0.3 * matrix.shape[1] + 2, 0.35 * matrix.shape[0] + 1))
    image = axis.imshow(matrix.numpy(), vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_yticks(range(len(diagnosis.attributes)), diagnosis.attributes, fontsize=7)
    axis.set_xlabel("prototype")
    figure.colorbar(image, label="AUROC")
    png = save_figure(figure, folder / "auroc_matrix.png")
    judged = sorted(
        (s for s in diagnosis.suspects if s.judged), key=lambda s: (not s.flagged, -s.other_auroc)
    )
    rows = "".join(_row(s) for s in judged)
    unjudged = [s.attribute for s in diagnosis.suspects if not s.judged]
    flagged = diagnosis.flagged
    th = diagnosis.thresholds
    target = html.escape(diagnosis.target)
    if flagged:
        evidence = "; ".join(
            f"{html.escape(s.attribute)} (AUROC {s.other_auroc:.2f} against {s.target_auroc:.2f} "
            f"for {target} where the two are independent): {html.escape(verdict(s))}"
            for s in diagnosis.suspects
            if s.flagged
        )
        headline = f"The model's prototypes for {target} follow {evidence}."
    elif not judged:
        headline = (
            f"Nothing could be judged: no attribute has {th['min_cell']} images in every cell "
            f"with {target}, so this diagnosis says nothing about shortcuts. Encode more images."
        )
    else:
        headline = f"No shortcut found for {target} among the {len(judged)} attributes judged."
    target_row = matrix[diagnosis.attributes.index(diagnosis.target)]
    if bool(target_row.isnan().all()):
        top = f"undefined ({target} takes a single value among these images)"
    else:
        top = str(diagnosis.top_prototypes)
    if "min_realised" in th:
        intervention = (
            f"only when its edits realise at least {th['min_realised']} of the requested change, "
            f"move the classifier's probability of the other attribute by at least "
            f"{th['min_effect']} and by more than editing random prototypes does."
        )
    else:
        intervention = (
            "(run for flagged attributes only) only when its edits realise enough of the requested "
            "change and move the classifier's probability of the other attribute by more than "
            "editing random prototypes does."
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Shortcut diagnosis</title>
</head><body style="font-family:sans-serif;max-width:1100px;margin:2em auto">
<h1>Shortcut diagnosis: {target}</h1>
<p style="font-size:1.2em"><b>{headline}</b></p>
<p>The top-{th["top_k"]} prototypes of {target} on all images: {top}.
Each attribute is judged on images where it and {target} are independent (the decorrelated
sample: equally many images from each of the four cells) and on the conflicting examples (where
the two disagree). AUROCs are oriented the way the model uses the prototypes for {target}
(0.5 is chance). Flagged when the prototypes separate the other attribute better than
{target} itself by more than {th["min_z"]} standard errors, side with it on the conflicting examples
(AUROC for {target} below 0.5), and |phi| is at least {th["min_phi"]}. An intervention confirms
{intervention}</p>
{_table(rows, target) if rows else ""}
<p>Not judged (fewer than {th["min_cell"]} images in a cell): {
        html.escape(", ".join(unjudged)) or "none"
    }.</p>
<h2>AUROC of every attribute from every prototype (all images)</h2>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}">
</body></html>
"""
    path = folder / "diagnosis.html"
    path.write_text(page)
    return path
