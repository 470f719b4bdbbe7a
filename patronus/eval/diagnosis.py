"""Shortcut diagnosis (the paper's experiment): does the model rely on a spurious attribute for a
target attribute, or do the two merely co-occur in the data?

The paper decides by eye from the attribute x prototype AUROC matrix. An AUROC matrix of the
biased data cannot answer the question: when two attributes co-occur at 0.95, a prototype that
encodes either one ranks high for both. Only images where the two *disagree* can tell them apart.

1. The target's top-k prototypes: the model's own account of the target (highest
   max(AUC(y, s_j), AUC(y, -s_j)) on all the data). Each is oriented: the side of s_j that goes
   with the target.
2. For every other attribute a with correlation phi to the target, a' = a if phi >= 0 else not a
   (the value that co-occurs with the target):
   - the **decorrelated sample**: equally many images from each of the four (target, a') cells,
     drawn with a fixed seed (the target and a' are independent in it);
   - the **conflicting examples**: the images where the target and a' disagree.
   Per top prototype: its oriented AUROC for the target and for a' on the decorrelated sample, and
   its oriented AUROC for the target on the conflicting examples (below 0.5: when the two
   disagree, the prototype sides with a').
3. The prototypes **encode a** when, averaged over the top-k, the decorrelated AUROC for a'
   exceeds the one for the target by more than ``min_z`` (2) standard errors (Hanley and McNeil's
   for one AUROC of the sample's size, combined for the difference: the sample may be small), and
   the conflicting examples side with a' (mean AUROC for the target below 0.5, chance). The
   question is relative: which of the two do the prototypes follow. (An absolute bar such as the
   paper's 0.75 for a captured attribute would call a weak model whose target prototypes follow
   the marker "no shortcut".) The model **relies on the shortcut** (``flagged``) when they encode a
   and |phi| >= ``min_phi`` (0.3): a correlation the data must contain for a shortcut to exist.
4. A candidate with fewer than ``min_cell`` images in a cell of the decorrelated sample is not
   judged (``judged=False``): there are too few conflicting examples to tell the two apart.

:mod:`patronus.eval.intervention` confirms a flag by editing the prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from patronus.eval.probes import auroc_matrix
from patronus.eval.roc import roc_auc
from patronus.utils.json_files import finite_json

CHANCE = 0.5
MIN_Z = 2.0


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil (1982): the standard error of an AUROC from its value and class sizes."""
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    variance = (
        auroc * (1 - auroc) + (positives - 1) * (q1 - auroc**2) + (negatives - 1) * (q2 - auroc**2)
    ) / (positives * negatives)
    return max(variance, 0.0) ** 0.5


def phi(a: torch.Tensor, b: torch.Tensor) -> float:
    """The correlation of two binary variables (Pearson on {0, 1})."""
    a, b = a.double(), b.double()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def decorrelated_sample(first: torch.Tensor, second: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Indices of equally many images from each (first, second) cell of two binary labels (N,):
    the largest sample in which the two are independent. Empty if a cell is empty."""
    first, second = first.bool(), second.bool()
    cells = [((first == a) & (second == b)).nonzero()[:, 0] for a in (0, 1) for b in (0, 1)]
    count = min(len(cell) for cell in cells)
    generator = torch.Generator().manual_seed(seed)
    chosen = [cell[torch.randperm(len(cell), generator=generator)[:count]] for cell in cells]
    return torch.cat(chosen).sort().values


def _oriented_auroc(scores: torch.Tensor, labels: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(N, K) scores, (N,) labels, (K,) bool orientation -> (K,) AUC of s (up) or of -s."""
    auc = roc_auc(scores, labels)
    return torch.where(up, auc, 1 - auc)


@dataclass(frozen=True)
class PrototypeEvidence:
    """One of the target's top prototypes judged against one other attribute (oriented AUROCs:
    0.5 is chance, 1 is perfect separation in the direction the model uses for the target)."""

    prototype: int
    target_auroc: float  # on the decorrelated sample
    other_auroc: float  # for a' on the decorrelated sample
    conflicting_target_auroc: float  # for the target on the conflicting examples


@dataclass(frozen=True)
class Intervention:
    """The edit of the target's top prototypes (:mod:`patronus.eval.intervention`)."""

    prototypes: list[int]
    realised: float  # median achieved / requested change of the edited activations
    other_effect: float  # mean |change| of the classifier's P(a)
    target_effect: float  # mean |change| of the classifier's P(target)
    null_effects: list[float]  # mean |change| of P(a) when random prototype sets are edited
    confirmed: bool | None  # None: underpowered, no verdict

    @property
    def powered(self) -> bool:
        """Whether the edits realised enough of their request for a verdict."""
        return self.confirmed is not None


@dataclass(frozen=True)
class Suspect:
    """The evidence that the target's prototypes encode another attribute."""

    attribute: str
    phi: float
    conflicting: int  # images where the target and a' disagree
    decorrelated: int  # size of the decorrelated sample
    judged: bool  # enough conflicting examples in every cell
    evidence: list[PrototypeEvidence] = field(default_factory=list)
    difference_se: float = float("nan")  # standard error of other_auroc - target_auroc
    encodes_other: bool = False
    flagged: bool = False
    intervention: Intervention | None = None  # set by patronus.eval.intervention.confirm

    @property
    def target_auroc(self) -> float:
        return _mean(e.target_auroc for e in self.evidence)

    @property
    def other_auroc(self) -> float:
        return _mean(e.other_auroc for e in self.evidence)

    @property
    def conflicting_target_auroc(self) -> float:
        return _mean(e.conflicting_target_auroc for e in self.evidence)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


@dataclass(frozen=True)
class Diagnosis:
    target: str
    top_prototypes: list[int]
    auroc: list[list[float]]  # (A, P) max(AUC(y, s), AUC(y, -s)) on all the data
    attributes: list[str]
    suspects: list[Suspect]
    thresholds: dict[str, float]

    @property
    def flagged(self) -> list[str]:
        return [s.attribute for s in self.suspects if s.flagged]

    def suspect(self, attribute: str) -> Suspect:
        for suspect in self.suspects:
            if suspect.attribute == attribute:
                return suspect
        raise KeyError(f"no suspect {attribute!r}; attributes: {self.attributes}")

    def to_dict(self) -> dict:
        data = asdict(self)
        for suspect, row in zip(self.suspects, data["suspects"], strict=True):
            row.update(
                target_auroc=suspect.target_auroc,
                other_auroc=suspect.other_auroc,
                conflicting_target_auroc=suspect.conflicting_target_auroc,
            )
            if suspect.intervention is not None:
                row["intervention"]["powered"] = suspect.intervention.powered
        return data

    def to_json(self) -> str:
        return finite_json(self.to_dict())


def diagnose(
    activations: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    target: str,
    top_k: int = 3,
    min_phi: float = 0.3,
    min_z: float = MIN_Z,
    min_cell: int = 10,
    seed: int = 0,
) -> Diagnosis:
    """The evidence, per other attribute, from encoded activations (N, P) and binary labels (N, A).

    ``seed`` draws the decorrelated samples. See the module docstring for the decision. A NaN
    label is missing (CheXpert's uncertain and unmentioned findings): the target's prototypes are
    chosen on the images that have the target, and each other attribute is judged on the images
    that have both.
    """
    names = list(names)
    if target not in names:
        raise ValueError(f"unknown target attribute {target!r}; attributes: {names}")
    if activations.shape[0] != labels.shape[0] or labels.shape[1] != len(names):
        raise ValueError(
            f"activations {tuple(activations.shape)}, labels {tuple(labels.shape)} and "
            f"{len(names)} names do not match: need (N, P), (N, A) and A names"
        )
    if not 1 <= top_k <= activations.shape[1]:
        raise ValueError(f"top_k must be in [1, {activations.shape[1]}], got {top_k}")
    labels = labels.double()
    known = ~torch.isnan(labels)
    odd = labels[known & (labels != 0) & (labels != 1)]  # bool() would read 2 as True
    if odd.numel():
        raise ValueError(
            f"labels must be binary (0/1 or bool, NaN where missing): {odd.numel()} are not, "
            f"e.g. {odd[0].item()}"
        )
    matrix = auroc_matrix(activations, labels)  # (A, P)
    t = names.index(target)
    top = matrix[t].argsort(descending=True)[:top_k]
    scores = activations[:, top].double()
    up = roc_auc(scores[known[:, t]], labels[known[:, t], t]) >= CHANCE
    suspects = []
    for a, name in enumerate(names):
        if a == t:
            continue
        both = known[:, t] & known[:, a]
        pair_scores, target_labels = scores[both], labels[both, t].bool()
        correlation = phi(target_labels, labels[both, a])
        other = labels[both, a].bool() if correlation >= 0 else ~labels[both, a].bool()
        sample = decorrelated_sample(target_labels, other, seed)
        conflicting = target_labels != other
        judged = len(sample) >= 4 * min_cell
        if not judged:
            suspects.append(Suspect(name, correlation, int(conflicting.sum()), len(sample), False))
            continue
        evidence = [
            PrototypeEvidence(int(j), float(ta), float(oa), float(ca))
            for j, ta, oa, ca in zip(
                top,
                _oriented_auroc(pair_scores[sample], target_labels[sample], up),
                _oriented_auroc(pair_scores[sample], other[sample], up),
                _oriented_auroc(pair_scores[conflicting], target_labels[conflicting], up),
                strict=True,
            )
        ]
        suspect = Suspect(name, correlation, int(conflicting.sum()), len(sample), True, evidence)
        half = len(sample) // 2  # a balanced sample: half positive for either label
        difference_se = (
            auroc_standard_error(suspect.other_auroc, half, half) ** 2
            + auroc_standard_error(suspect.target_auroc, half, half) ** 2
        ) ** 0.5
        encodes = (
            suspect.other_auroc - suspect.target_auroc > min_z * difference_se
            and suspect.conflicting_target_auroc < CHANCE
        )
        flagged = encodes and abs(correlation) >= min_phi
        suspects.append(
            replace(suspect, difference_se=difference_se, encodes_other=encodes, flagged=flagged)
        )
    return Diagnosis(
        target,
        top.tolist(),
        matrix.tolist(),
        names,
        suspects,
        {
            "top_k": top_k,
            "min_phi": min_phi,
            "min_z": min_z,
            "min_cell": min_cell,
            "seed": seed,
        },
    )
