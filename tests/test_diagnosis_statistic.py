"""The shortcut diagnosis' statistic and verdict on constructed cases with known answers."""

import math

import pytest
import torch

from patronus.eval.diagnosis import auroc_standard_error, decorrelated_sample, diagnose
from patronus.eval.diagnosis_page import write_diagnosis
from patronus.eval.intervention import edited_towards_other_group, realised_fraction, verdict_of
from patronus.eval.roc import roc_auc


def correlated_labels(n, correlation, generator):
    """(n, 2) binary labels: target ~ Bernoulli(0.4), marker = target with probability
    ``correlation``, else an independent Bernoulli(0.4)."""
    target = torch.rand(n, generator=generator) < 0.4
    independent = torch.rand(n, generator=generator) < 0.4
    tied = torch.rand(n, generator=generator) < correlation
    marker = torch.where(tied, target, independent)
    return torch.stack([target, marker], dim=1).long()


def activations_encoding(labels, encoded, generator, prototypes=6):
    """(n, P) activations: prototypes 0-1 carry column ``encoded`` of the labels (0: the
    target, 1: the marker) with noise, the rest are noise; prototype 1 is sign-flipped."""
    n = labels.shape[0]
    s = torch.randn(n, prototypes, generator=generator)
    signal = labels[:, encoded].float() * 3.0
    s[:, 0] += signal
    s[:, 1] -= signal
    return s


def test_decorrelated_sample_has_equal_cells():
    generator = torch.Generator().manual_seed(0)
    labels = correlated_labels(3000, 0.95, generator)
    index = decorrelated_sample(labels[:, 0], labels[:, 1], seed=3)
    cells = torch.bincount(labels[index, 0] * 2 + labels[index, 1], minlength=4)
    assert cells.min() == cells.max() > 10
    assert len(index.unique()) == len(index)
    smallest = torch.bincount(labels[:, 0] * 2 + labels[:, 1], minlength=4).min()
    assert cells[0] == smallest  # the largest balanced sample
    assert torch.equal(index, decorrelated_sample(labels[:, 0], labels[:, 1], seed=3))


def test_auroc_standard_error_matches_the_spread_of_simulated_aurocs():
    """Hanley and McNeil's formula against 400 simulated samples of 60 + 90 scores (binormal,
    AUROC about 0.76): within 20% of the empirical standard deviation."""
    generator = torch.Generator().manual_seed(4)
    labels = torch.cat([torch.ones(60), torch.zeros(90)]).bool()
    scores = torch.randn(400, 150, generator=generator) + labels.float() * 1.0
    aurocs = roc_auc(scores.t(), labels)
    expected = auroc_standard_error(float(aurocs.mean()), 60, 90)
    assert float(aurocs.std()) == pytest.approx(expected, rel=0.2)
    assert auroc_standard_error(0.9, 50, 50) == pytest.approx(0.0321, abs=1e-4)  # by hand


@pytest.mark.parametrize("encoded, expected", [(1, True), (0, False)])
def test_flags_prototypes_that_encode_the_marker(encoded, expected):
    generator = torch.Generator().manual_seed(1)
    labels = correlated_labels(4000, 0.95, generator)
    s = activations_encoding(labels, encoded, generator)
    diagnosis = diagnose(s, labels, ["core", "marker"], "core", top_k=2)
    suspect = diagnosis.suspect("marker")
    assert sorted(diagnosis.top_prototypes) == [0, 1]
    assert suspect.judged and suspect.phi > 0.8
    assert suspect.flagged is expected and suspect.encodes_other is expected
    assert diagnosis.flagged == (["marker"] if expected else [])
    if expected:  # the prototypes follow the marker: chance for the core, below chance where
        # the two disagree
        assert suspect.other_auroc > 0.9 and abs(suspect.target_auroc - 0.5) < 0.1
        assert suspect.conflicting_target_auroc < 0.2
    else:
        assert suspect.target_auroc > 0.9 and abs(suspect.other_auroc - 0.5) < 0.1
        assert suspect.conflicting_target_auroc > 0.8
    # both sides of the data show a high AUROC on all images: the matrix alone cannot tell
    matrix = torch.tensor(diagnosis.auroc)
    assert matrix[:, :2].min() > 0.85


def test_uncorrelated_attributes_are_never_flagged():
    generator = torch.Generator().manual_seed(2)
    labels = correlated_labels(2000, 0.0, generator)
    s = activations_encoding(labels, 1, generator)
    # the target's best prototypes are noise; make prototype 2 weakly carry both attributes so
    # that the marker is what the top prototypes encode best
    s[:, 2] += labels[:, 0] * 0.3 + labels[:, 1] * 3.0
    diagnosis = diagnose(s, labels, ["core", "marker"], "core", top_k=1)
    suspect = diagnosis.suspect("marker")
    assert abs(suspect.phi) < 0.1
    assert suspect.encodes_other and not suspect.flagged


def test_too_few_conflicting_examples_are_not_judged():
    generator = torch.Generator().manual_seed(3)
    labels = correlated_labels(300, 1.0, generator)
    labels[:5, 1] = 1 - labels[:5, 1]
    s = activations_encoding(labels, 1, generator)
    suspect = diagnose(s, labels, ["core", "marker"], "core").suspect("marker")
    assert not suspect.judged and not suspect.flagged and suspect.evidence == []
    assert suspect.conflicting == 5 and math.isnan(suspect.other_auroc)


def test_diagnose_rejects_bad_input():
    s, labels = torch.randn(20, 4), torch.randint(0, 2, (20, 2))
    with pytest.raises(ValueError, match="unknown target"):
        diagnose(s, labels, ["a", "b"], "c")
    with pytest.raises(ValueError, match="do not match"):
        diagnose(s[:10], labels, ["a", "b"], "a")
    with pytest.raises(ValueError, match="top_k"):
        diagnose(s, labels, ["a", "b"], "a", top_k=5)


def test_edit_towards_the_other_group():
    s = torch.tensor([[0.0, 5.0], [1.0, 5.0], [10.0, 5.0], [11.0, 5.0], [12.0, 5.0]])
    target = torch.tensor([0, 0, 1, 1, 1])
    edited = edited_towards_other_group(s, target, [0])
    high = torch.tensor([10.0, 11.0, 12.0]).quantile(0.95)
    low = torch.tensor([0.0, 1.0]).quantile(0.05)
    torch.testing.assert_close(edited[:, 0], torch.stack([high, high, low, low, low]))
    assert torch.equal(edited[:, 1], s[:, 1])
    with pytest.raises(ValueError, match="both target groups"):
        edited_towards_other_group(s, torch.ones(5), [0])


def test_realised_fraction_and_verdict():
    own = torch.zeros(3, 2)
    edited = torch.tensor([[2.0, 0.0], [4.0, 0.0], [-2.0, 0.0]])
    achieved = torch.tensor([[1.0, 9.0], [1.0, 9.0], [-2.0, 9.0]])  # 0.5, 0.25, 1.0
    assert realised_fraction(own, edited, achieved, [0]) == pytest.approx(0.5)
    assert math.isnan(realised_fraction(own, edited, achieved, [1]))  # nothing asked
    assert verdict_of(0.3, 0.5, [0.0]) is None  # underpowered: no verdict
    assert verdict_of(math.nan, 0.5, [0.0]) is None
    assert verdict_of(0.8, 0.5, [0.1, 0.2]) is True
    assert verdict_of(0.8, 0.5, [0.1, 0.6]) is False  # a random edit moves it more
    assert verdict_of(0.8, 0.05, []) is False  # too small an effect


def test_an_intervention_is_powered_exactly_when_it_has_a_verdict():
    from dataclasses import replace

    from patronus.eval.diagnosis import Diagnosis, Intervention, Suspect

    silent = Intervention([0], 0.2, 0.3, 0.0, [0.1], None)
    assert not silent.powered and replace(silent, confirmed=False).powered
    suspect = Suspect("colour", 0.9, 20, 40, True, intervention=replace(silent, confirmed=True))
    diagnosis = Diagnosis("shape", [0], [[0.5]], ["shape", "colour"], [suspect], {})
    assert diagnosis.to_dict()["suspects"][0]["intervention"]["powered"] is True


def test_page_states_the_verdict(tmp_path):
    generator = torch.Generator().manual_seed(1)
    labels = correlated_labels(4000, 0.95, generator)
    for encoded, expected in ((1, "follow marker (AUROC"), (0, "No shortcut found for core")):
        s = activations_encoding(labels, encoded, generator)
        diagnosis = diagnose(s, labels, ["core", "marker"], "core", top_k=2)
        page = write_diagnosis(diagnosis, tmp_path / str(encoded)).read_text()
        assert expected in page
        assert ("intervention not run" in page) is (encoded == 1)
        assert (tmp_path / str(encoded) / "diagnosis.json").is_file()


def test_page_of_too_few_images_says_nothing_was_judged(tmp_path):
    """Twelve images cannot fill ten per cell: the page must not read as a clean bill
    ("No shortcut found ... among the 0 attributes judged" did), and without an intervention it
    quotes no thresholds of one (it wrote "at least n/a")."""
    generator = torch.Generator().manual_seed(2)
    labels = correlated_labels(12, 0.95, generator)
    s = activations_encoding(labels, 1, generator)
    page = write_diagnosis(diagnose(s, labels, ["core", "marker"], "core"), tmp_path).read_text()
    assert "Nothing could be judged: no attribute has 10 images in every cell with core" in page
    assert "No shortcut found" not in page and "n/a" not in page and "<table" not in page
    constant = labels.clone()
    constant[:, 0] = 1  # core takes one value: its prototypes cannot be ranked
    page = write_diagnosis(diagnose(s, constant, ["core", "marker"], "core"), tmp_path).read_text()
    assert "prototypes of core on all images: undefined (core takes a single value" in page


def with_nan(labels):
    return labels.float().index_fill(0, torch.tensor([5]), float("nan"))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda y: (y, ["core"], "core"), r"labels \(400, 2\) and 1 names do not match"),
        (lambda y: (y, ["core", "marker"], "hair"), "unknown target attribute 'hair'"),
        (lambda y: (y * 2, ["core", "marker"], "core"), r"0/1 or bool, NaN where missing\): \d+"),
        (lambda y: (with_nan(y) * 2, ["core", "marker"], "core"), r"e\.g\. 2\.0"),
    ],
    ids=["names", "target", "not-binary", "not-binary-beside-missing"],
)
def test_diagnosis_inputs_are_checked(change, match):
    """Labels of 0/2 were read as True by bool() (NaN is a missing label: the next test)."""
    generator = torch.Generator().manual_seed(4)
    labels = correlated_labels(400, 0.9, generator)
    s = activations_encoding(labels, 1, generator)
    with pytest.raises(ValueError, match=match):
        diagnose(s, *change(labels))


def test_a_missing_label_leaves_its_image_out_of_that_attribute_only():
    """CheXpert leaves most findings unmentioned or uncertain (NaN); the command line kept only
    images with every attribute known, nearly none on the real data."""
    generator = torch.Generator().manual_seed(1)
    labels = correlated_labels(4000, 0.95, generator)
    s = activations_encoding(labels, 1, generator)
    third = (torch.rand(4000, generator=generator) < 0.5).float()
    gone = torch.rand(4000, generator=generator) < 0.7
    full = torch.cat([labels.float(), third.masked_fill(gone, float("nan"))[:, None]], dim=1)
    diagnosis = diagnose(s, full, ["core", "marker", "other"], "core", top_k=2)
    # the marker, known everywhere, is judged exactly as without the third attribute
    alone = diagnose(s, labels, ["core", "marker"], "core", top_k=2)
    assert diagnosis.suspect("marker") == alone.suspect("marker") and alone.flagged == ["marker"]
    # the third attribute is judged on the images that have it, and only there
    kept = diagnose(s[~gone], full[~gone][:, [0, 2]], ["core", "other"], "core", top_k=2)
    assert diagnosis.suspect("other") == kept.suspect("other")
    assert diagnosis.suspect("other").decorrelated > 0
    # a target missing on half the images: its prototypes are chosen where it is known
    full[::2, 0] = float("nan")
    half = diagnose(s, full, ["core", "marker", "other"], "core", top_k=2)
    assert sorted(half.top_prototypes) == [0, 1] and half.flagged == ["marker"]
