"""Shortcut diagnosis (the paper's experiment) with a statistic, a threshold and an intervention.

1. The attribute x prototype AUROC matrix (max(AUC(y, s_j), AUC(y, -s_j))).
2. For a target attribute, its top-k prototypes, and for every other attribute the share of them
   among its own top-k (the overlap) and the attributes' correlation in the data (phi).
3. Suspected shortcut: overlap >= ``min_overlap`` (default 2 of 3) and |phi| >= ``min_phi``
   (default 0.3): the model encodes both attributes with the same prototypes and the data lets it.
4. Confirmation by intervention: set the shared prototypes' activations of every image to a
   typical value of the other target group (its 95% quantile on the side away from the first
   group's mean: a target-negative image gets what target-positive images show strongly, and back),
   decode from each image's own x_T, and measure how much an attribute classifier's probability of
   the *other* attribute changes. The shortcut is confirmed when that change is at least
   ``min_effect`` (default 0.1) — editing what should be the target changes the other attribute.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from patronus.eval.classifier import SmallClassifier
from patronus.eval.probes import auroc_matrix
from patronus.interpret.what import invert_images
from patronus.models import Patronus


def phi(a: torch.Tensor, b: torch.Tensor) -> float:
    """The correlation of two binary variables (Pearson on {0, 1})."""
    a, b = a.double(), b.double()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@dataclass(frozen=True)
class Suspect:
    attribute: str
    shared_prototypes: list[int]
    overlap: float
    phi: float
    flagged: bool
    effect: float | None = None  # mean |change| of the classifier's probability, if tested
    confirmed: bool | None = None


@dataclass(frozen=True)
class Diagnosis:
    target: str
    top_prototypes: list[int]
    auroc: list[list[float]]  # (A, P)
    attributes: list[str]
    suspects: list[Suspect]
    thresholds: dict[str, float]

    @property
    def flagged(self) -> list[str]:
        return [s.attribute for s in self.suspects if s.flagged]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def diagnose(
    activations: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    target: str,
    top_k: int = 3,
    min_overlap: float = 2 / 3,
    min_phi: float = 0.3,
) -> Diagnosis:
    """Statistics and flags from encoded activations (N, P) and binary labels (N, A)."""
    if target not in names:
        raise ValueError(f"unknown target attribute {target!r}; attributes: {list(names)}")
    names = list(names)
    matrix = auroc_matrix(activations, labels.long())  # (A, P)
    top = matrix.argsort(dim=1, descending=True)[:, :top_k]
    t = names.index(target)
    target_top = set(top[t].tolist())
    suspects = []
    for a, name in enumerate(names):
        if a == t:
            continue
        shared = sorted(target_top & set(top[a].tolist()))
        overlap = len(shared) / top_k
        correlation = phi(labels[:, t], labels[:, a])
        flagged = overlap >= min_overlap and abs(correlation) >= min_phi
        suspects.append(Suspect(name, shared, overlap, correlation, flagged))
    return Diagnosis(
        target,
        top[t].tolist(),
        matrix.tolist(),
        names,
        suspects,
        {"top_k": top_k, "min_overlap": min_overlap, "min_phi": min_phi},
    )


@torch.no_grad()
def intervene(
    model: Patronus,
    images: torch.Tensor,
    activations: torch.Tensor,
    target_labels: torch.Tensor,
    prototypes: Sequence[int],
    classifier: SmallClassifier,
    attribute_index: int,
    steps: int = 50,
    guidance_scale: float | None = None,
) -> float:
    """Mean |change| of the classifier's probability of attribute ``attribute_index`` when the
    ``prototypes`` of each image are moved to the other target group's typical strong values
    (inverted and decoded with ``guidance_scale``, default the model's)."""
    if not prototypes:
        return 0.0
    index = torch.tensor(list(prototypes))
    group_positive = activations[target_labels.bool()][:, index]
    group_negative = activations[~target_labels.bool()][:, index]
    upward = group_positive.mean(0) > group_negative.mean(0)  # per prototype

    def typical(group: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return torch.where(high, group.quantile(0.95, dim=0), group.quantile(0.05, dim=0))

    positive = typical(group_positive, upward)
    negative = typical(group_negative, ~upward)
    inversion = invert_images(model, images, steps, guidance_scale)
    edited = inversion.activations.clone()
    flip = target_labels.bool()
    edited[flip.nonzero()[:, 0][:, None], index] = negative.to(edited)
    edited[(~flip).nonzero()[:, 0][:, None], index] = positive.to(edited)
    reference = inversion.decode(model, inversion.activations)
    changed = inversion.decode(model, edited)
    before = classifier.probabilities(reference)[:, attribute_index]
    after = classifier.probabilities(changed)[:, attribute_index]
    return float((after - before).abs().mean())


def confirm(
    diagnosis: Diagnosis,
    model: Patronus,
    images: torch.Tensor,
    activations: torch.Tensor,
    labels: torch.Tensor,
    classifier: SmallClassifier,
    steps: int = 50,
    min_effect: float = 0.1,
    guidance_scale: float | None = None,
) -> Diagnosis:
    """Run the intervention for every flagged suspect; returns the diagnosis with effects."""
    t = diagnosis.attributes.index(diagnosis.target)
    suspects = []
    for suspect in diagnosis.suspects:
        if suspect.flagged:
            a = diagnosis.attributes.index(suspect.attribute)
            effect = intervene(
                model,
                images,
                activations,
                labels[:, t],
                suspect.shared_prototypes,
                classifier,
                a,
                steps,
                guidance_scale,
            )
            suspect = Suspect(
                **{**asdict(suspect), "effect": effect, "confirmed": effect >= min_effect}
            )
        suspects.append(suspect)
    thresholds = {**diagnosis.thresholds, "min_effect": min_effect}
    return Diagnosis(
        diagnosis.target,
        diagnosis.top_prototypes,
        diagnosis.auroc,
        diagnosis.attributes,
        suspects,
        thresholds,
    )


def write_diagnosis(diagnosis: Diagnosis, folder: Path) -> Path:
    """``diagnosis.json`` and ``diagnosis.html`` (the AUROC matrix as a heat map, the evidence)."""
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
    rows = "".join(
        f"<tr><td>{html.escape(s.attribute)}</td><td>{s.shared_prototypes}</td>"
        f"<td>{s.overlap:.2f}</td><td>{s.phi:+.2f}</td><td>{'yes' if s.flagged else 'no'}</td>"
        f"<td>{'' if s.effect is None else f'{s.effect:.3f}'}</td>"
        f"<td>{'' if s.confirmed is None else ('yes' if s.confirmed else 'no')}</td></tr>"
        for s in diagnosis.suspects
    )
    th = diagnosis.thresholds
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Shortcut diagnosis</title>
</head><body style="font-family:sans-serif;max-width:1000px;margin:2em auto">
<h1>Shortcut diagnosis: {html.escape(diagnosis.target)}</h1>
<p>Top-{th["top_k"]} prototypes of {html.escape(diagnosis.target)}: {diagnosis.top_prototypes}.
Flag: at least {th["min_overlap"]:.2f} of them among another attribute's top prototypes and
|phi| of the two attributes at least {th["min_phi"]}; confirmed when moving the shared prototypes
changes a classifier's probability of the other attribute by at least
{th.get("min_effect", "n/a")} on average.</p>
<table border="1" cellpadding="3"><tr><th>attribute</th><th>shared prototypes</th><th>overlap</th>
<th>phi</th><th>flagged</th><th>effect</th><th>confirmed</th></tr>{rows}</table>
<h2>AUROC of every attribute from every prototype</h2>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}">
</body></html>
"""
    path = folder / "diagnosis.html"
    path.write_text(page)
    return path
