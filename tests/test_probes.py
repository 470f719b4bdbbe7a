"""Linear probes, TAD and captured attributes on constructed activations with known answers."""

import math

import pytest
import torch

from patronus.eval.probes import (
    auroc_matrix,
    entropy_reduction,
    fold_indices,
    linear_probes,
    mutual_information,
    tad,
)
from patronus.eval.roc import factor_auroc, roc_auc


def constructed(n=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=generator)
    b = torch.randint(0, 2, (n,), generator=generator)
    noise = torch.randn(n, 5, generator=generator)
    activations = torch.stack([
        a + 0.01 * noise[:, 0],  # attribute a, perfectly
        noise[:, 1],
        noise[:, 2],
        b + 0.01 * noise[:, 3],  # attribute b, twice equally well
        b + 0.01 * noise[:, 4],
    ], dim=1)  # fmt: skip
    return activations, a, b


def test_roc_auc_known_values():
    assert float(roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))) == 0.75
    assert float(roc_auc(torch.tensor([1.0, 1.0, 2.0, 2.0]), torch.tensor([0, 1, 0, 1]))) == 0.5
    scores = torch.tensor([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0]])
    assert factor_auroc(scores, torch.tensor([0, 0, 1])).tolist() == [1.0, 1.0]
    assert math.isnan(float(roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))))


def test_roc_auc_is_scikit_learns_with_ties_and_columns():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is an optional extra")
    generator = torch.Generator().manual_seed(3)
    labels = torch.rand(97, generator=generator) < 0.3
    continuous = torch.randn(97, 3, generator=generator) + labels[:, None] * 0.8
    tied = torch.randint(0, 4, (97, 2), generator=generator).float()  # many ties
    scores = torch.cat([continuous, tied], dim=1)
    expected = [metrics.roc_auc_score(labels.numpy(), column) for column in scores.T.numpy()]
    assert roc_auc(scores, labels).tolist() == pytest.approx(expected, rel=1e-12)


SCORES, LABELS = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (SCORES, LABELS[:3], r"labels must be \(4,\), one per score, got \(3,\)"),
        (SCORES, torch.tensor([0, 1, 2, 1]), "binary .* got values 0, 1, 2; for a class k"),
        (LABELS.float(), SCORES, "binary"),  # the arguments swapped
        (torch.tensor([0.1, float("nan"), 0.3, 0.8]), LABELS, r"NaN or Inf \(1 of 4"),
        (torch.tensor(0.5), LABELS, "got a scalar"),
    ],
)
def test_roc_auc_refuses_what_it_would_misread(scores, labels, match):
    # before these checks: NaN scores ranked as numbers, label 2 counted as positive, swapped
    # arguments gave NaN, a short label vector an IndexError
    with pytest.raises(ValueError, match=match):
        roc_auc(scores, labels)


def test_roc_auc_takes_binary_labels_of_any_dtype():
    for labels in (LABELS, LABELS.bool(), LABELS.float(), LABELS.double()):
        assert float(roc_auc(SCORES, labels)) == 0.75


@pytest.mark.parametrize("function", ["auroc_matrix", "tad", "linear_probes"])
def test_probe_inputs_are_checked(function):
    activations, a, b = constructed(50)
    labels = torch.stack([a, b], dim=1)
    call = {
        "auroc_matrix": lambda x, y: auroc_matrix(x, y),
        "tad": lambda x, y: tad(x, y, ["a", "b"]),
        "linear_probes": lambda x, y: linear_probes(x, y, ["a", "b"]),
    }[function]
    with pytest.raises(ValueError, match=r"labels must be \(N, A\) = \(50, A\)"):
        call(activations, labels[:40])
    with pytest.raises(ValueError, match="activations contain NaN"):
        call(activations.index_fill(0, torch.tensor([3]), float("nan")), labels)
    with pytest.raises(ValueError, match=r"activations must be \(N, F\)"):
        call(activations[:, 0], labels)


def test_tad_on_constructed_activations():
    activations, a, b = constructed()
    copy = a.clone()  # an attribute fully determined by another: not captured
    labels = torch.stack([a, b, copy], dim=1)
    result = tad(activations, labels, ["a", "b", "copy"])
    attributes = result["attributes"]
    assert attributes["a"]["best_auroc"] > 0.99
    assert attributes["a"]["gap"] == pytest.approx(0.5, abs=0.06)  # best 1.0, next random ~0.5
    assert attributes["b"]["gap"] == pytest.approx(0.0, abs=0.02)  # two equally good prototypes
    assert attributes["copy"]["entropy_reduction"] == pytest.approx(1.0)
    assert result["captured"] == ["b"]  # a and copy determine each other: neither is captured
    assert result["tad"] == pytest.approx(attributes["b"]["gap"])
    independent = tad(activations, torch.stack([a, b], dim=1), ["a", "b"])
    assert independent["captured"] == ["a", "b"]
    assert independent["tad"] == pytest.approx(0.5, abs=0.06)


def test_tad_with_missing_labels_measures_each_attribute_where_it_is_known():
    """CheXpert leaves most findings unmentioned or uncertain (NaN): TAD read NaN as a label
    (a ValueError), and the command line kept only images with all 14 findings known, nearly
    none on the real data."""
    activations, a, b = constructed()
    missing = torch.rand(len(a), generator=torch.Generator().manual_seed(1)) < 0.6
    b_known = torch.where(missing, float("nan"), b.double())  # 60% of b missing
    a_known = torch.where(~missing, float("nan"), a.double())  # a known exactly where b is not
    labels = torch.stack([a.double(), b_known, a_known], dim=1)
    assert not bool((~torch.isnan(labels)).all(1).any())  # no image has every label
    result = tad(activations, labels, ["a", "b", "a again"])
    attributes = result["attributes"]
    assert attributes["b"]["best_auroc"] > 0.99  # prototypes 3 and 4 on the images that have b
    assert attributes["b"]["gap"] == pytest.approx(0.0, abs=0.02)
    assert attributes["a again"]["gap"] == pytest.approx(0.5, abs=0.08)
    # "a again" is a wherever both are known: it determines a, and they are never captured
    assert attributes["a"]["entropy_reduction"] == pytest.approx(1.0)
    assert attributes["b"]["entropy_reduction"] == pytest.approx(0.0, abs=0.01)
    assert result["captured"] == ["b"]
    matrix = auroc_matrix(activations, labels)
    known = ~missing
    torch.testing.assert_close(matrix[1], factor_auroc(activations[known], b[known]))


def test_entropy_reduction_and_mutual_information():
    a = torch.tensor([0, 0, 1, 1] * 50)
    b = torch.tensor([0, 1, 0, 1] * 50)
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(a, a) == pytest.approx(math.log(2))
    assert entropy_reduction(torch.stack([a, b, a], 1)).tolist() == pytest.approx([1.0, 0.0, 1.0])


def test_linear_probes_find_a_planted_prototype():
    pytest.importorskip("sklearn", reason="scikit-learn is an optional extra")
    activations, a, _ = constructed(600)
    generator = torch.Generator().manual_seed(3)
    classes = torch.randint(0, 4, (600,), generator=generator)
    features = torch.cat([activations, classes[:, None] + 0.1 * torch.randn(600, 1,
                          generator=generator)], dim=1)  # fmt: skip
    noise_label = torch.randint(0, 2, (600,), generator=generator)
    labels = torch.stack([a, classes, noise_label], dim=1)
    result = linear_probes(features, labels, ["a", "class", "noise"])
    assert result["a"]["metric"] == "roc_auc" and result["a"]["mean"] > 0.99
    assert result["class"]["metric"] == "accuracy" and result["class"]["mean"] > 0.9
    assert abs(result["noise"]["mean"] - 0.5) < 0.1 and result["noise"]["folds"] == 5


def test_folds_partition_the_samples():
    parts = fold_indices(23, 5, seed=1)
    assert sorted(torch.cat(parts).tolist()) == list(range(23))
    assert [len(p) for p in parts] == [5, 5, 5, 4, 4]
    with pytest.raises(ValueError, match="at least 5"):
        fold_indices(3)


def test_an_attribute_no_fold_can_score_is_reported_not_dropped():
    pytest.importorskip("sklearn", reason="scikit-learn is an optional extra")
    activations, a, b = constructed(100)
    result = linear_probes(activations, torch.stack([torch.ones_like(a), b], 1), ["one", "b"])
    assert list(result) == ["one", "b"]  # "one" was missing from the results
    assert result["one"]["folds"] == 0 and math.isnan(result["one"]["mean"])
    assert math.isnan(result["one"]["std"])
    assert result["b"]["folds"] == 5 and result["b"]["mean"] > 0.99


@pytest.mark.parametrize("function", [linear_probes, tad])
def test_names_must_match_the_label_columns(function):
    activations, a, b = constructed(50)
    with pytest.raises(ValueError, match="1 names for 2 label columns"):  # zip dropped "b"
        function(activations, torch.stack([a, b], 1), ["a"])
