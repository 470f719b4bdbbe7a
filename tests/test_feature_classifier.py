"""What the FID feature classifier learns from each dataset's labels, and `evaluate fid` on
datasets without a class label (FFHQ, flat folders), without a test split (folders), and with
missing labels (CheXpert)."""

import json

import pytest
import torch
from PIL import Image

from patronus.cli import main
from patronus.eval.classifier import ClassifierConfig, train_classifier
from patronus.eval.classifier_targets import NoLabelsError, classifier_targets


def test_class_labels_are_the_targets():
    wanted = classifier_targets("fashion-mnist", torch.tensor([3, 0, 9, 3]))
    assert not wanted.multilabel and wanted.names == ["class"] and wanted.outputs == 10
    assert wanted.targets.tolist() == [3, 0, 9, 3] and wanted.targets.dtype == torch.int64
    with pytest.raises(NoLabelsError, match="every folder image has the same class label"):
        classifier_targets("folder", torch.zeros(5, dtype=torch.long))  # a one-class softmax


def test_chexpert_uncertain_and_unmentioned_are_missing_not_negative():
    from patronus.data.chexpert import OBSERVATIONS

    labels = torch.full((3, len(OBSERVATIONS)), float("nan"))
    labels[:, 0] = torch.tensor([1.0, 0.0, -1.0])  # positive, negative, uncertain
    labels[:, 2] = torch.tensor([1.0, float("nan"), 0.0])
    labels[:, 5] = torch.tensor([1.0, 1.0, -1.0])  # never negative: nothing to learn
    wanted = classifier_targets("chexpert", labels, list(OBSERVATIONS))
    assert wanted.multilabel and wanted.names == [OBSERVATIONS[0], OBSERVATIONS[2]]
    expected = torch.tensor([[1.0, 1.0], [0.0, float("nan")], [float("nan"), 0.0]])
    torch.testing.assert_close(wanted.targets, expected, equal_nan=True)
    with pytest.raises(NoLabelsError, match="no chexpert attribute takes both values"):
        classifier_targets("chexpert", labels[:1], list(OBSERVATIONS))


def test_synthetic_factors_become_binary_attributes():
    """The synthetic set's labels are factor indices (0-2); they were fed to a binary
    cross-entropy as if they were probabilities."""
    from patronus.data import SyntheticShapes

    shapes = SyntheticShapes(60, 16)
    wanted = classifier_targets("synthetic", shapes.labels)
    assert wanted.multilabel and "shape=circle" in wanted.names and "shape" not in wanted.names
    assert set(wanted.targets.unique().tolist()) == {0.0, 1.0}
    circle = wanted.names.index("shape=circle")
    assert torch.equal(wanted.targets[:, circle], (shapes.labels[:, 0] == 1).float())


def test_a_missing_target_is_left_out_of_the_loss():
    """With NaN targets the loss was NaN and the classifier's weights NaN after one step."""
    torch.manual_seed(0)
    images = torch.randn(6, 1, 16, 16)
    targets = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), 0.0]] * 2)
    config = ClassifierConfig(1, 16, 2, multilabel=True)
    model = train_classifier(config, [(images, targets)], 3)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    # only the observed entries count: their targets alone decide the gradient
    from patronus.eval.classifier import _observed_binary_cross_entropy

    logits = torch.randn(6, 2)
    observed = ~torch.isnan(targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[observed], targets[observed]
    )
    torch.testing.assert_close(_observed_binary_cross_entropy(logits, targets), expected)
    every_missing = torch.full((6, 2), float("nan"))
    assert _observed_binary_cross_entropy(logits, every_missing).item() == 0.0


# ------------------------------------------------------------------------- the command line
def _gray_model_on(tmp_path, name, data_dir):
    """An untrained gray synthetic-tiny model whose run names the dataset (plumbing only)."""
    from dataclasses import replace

    from patronus import Patronus, save_model
    from patronus.models.presets import get_preset

    torch.manual_seed(0)
    model = Patronus(replace(get_preset("synthetic-tiny").model, image_channels=1)).eval()
    run = tmp_path / f"{name}-run"
    save_model(model, run, metadata={"data": {"name": name, "data_dir": str(data_dir), "seed": 0}})
    return run


def _write_folder(root, classes, per_class):
    for c, name in enumerate(classes):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("L", (30, 30), 20 + 100 * c + 5 * i).save(folder / f"{c}_{i}.png")


FID = ["evaluate", "fid", "--steps", "2", "--classifier-steps", "4", "--no-progress"]


def test_fid_refuses_a_dataset_without_labels_before_sampling(tmp_path, capsys):
    """A flat folder (and FFHQ) gave FID in the random features of a one-class classifier."""
    _write_folder(tmp_path / "flat", [""], 6)
    run = _gray_model_on(tmp_path, "folder", tmp_path / "flat")
    out = tmp_path / "fid"
    assert main([*FID[:2], str(run), *FID[2:], "--num", "4", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "every folder image has the same class label" in error and "--inception-weights" in error
    assert not (out / "samples").exists()  # refused before any sampling


@pytest.mark.parametrize(("num", "conditioned", "reference"), [(3, 3, 3), (50, 6, 6)])
def test_fid_on_a_folder_compares_with_images_it_did_not_condition_on(
    tmp_path, capsys, monkeypatch, num, conditioned, reference
):
    """A folder's "test" split is its training images: conditional samples were compared with
    the very images they were conditioned on."""
    import patronus.eval.encode as encode

    _write_folder(tmp_path / "pets", ["cats", "dogs"], 6)
    run = _gray_model_on(tmp_path, "folder", tmp_path / "pets")
    encoded = []
    real = encode.encode_dataset

    def recording(model, dataset, limit=None, **kwargs):
        encoded.append([dataset[i][0] for i in range(min(len(dataset), limit or len(dataset)))])
        return real(model, dataset, limit, **kwargs)

    monkeypatch.setattr(encode, "encode_dataset", recording)
    out = tmp_path / "fid"
    assert main([*FID[:2], str(run), *FID[2:], "--num", str(num), "--out", str(out)]) == 0
    result = json.loads((out / "fid.json").read_text())
    assert result["generated"] == conditioned and result["reference"] == reference
    assert result["reference_from"] == f"training images {conditioned}.. (folder has no test split)"
    printed = capsys.readouterr().err
    assert "training a feature classifier on class" in printed
    assert f"encoding {conditioned} training images to condition on" in printed
    from patronus.data import build_dataset

    pets = build_dataset("folder", tmp_path / "pets", image_size=24, channels=1)
    conditioning = torch.stack(encoded[0])
    torch.testing.assert_close(conditioning, torch.stack([pets[i][0] for i in range(conditioned)]))


def test_fid_on_chexpert(tmp_path):
    """CheXpert crashed: "test" is not one of its splits, and its uncertain and unmentioned
    labels made the classifier's loss NaN."""
    from test_data import write_chexpert

    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    write_chexpert(root)  # two images: No Finding 1, uncertain Cardiomegaly, the rest unmentioned
    header, first, second = (root / "train.csv").read_text().splitlines()
    fields = second.split(",")
    fields[5] = "0.0"  # the second image has a finding: No Finding takes both values
    table = "\n".join([header, first, ",".join(fields)]) + "\n"
    for split in ("train", "valid"):
        (root / f"{split}.csv").write_text(table)
    run = _gray_model_on(tmp_path, "chexpert", root)
    out = tmp_path / "fid"
    assert main([*FID[:2], str(run), *FID[2:], "--num", "2", "--out", str(out)]) == 0
    result = json.loads((out / "fid.json").read_text())
    assert result["reference_from"] == "test images" and result["fid"] is not None
    from patronus.eval.classifier import load_classifier

    classifier = load_classifier(out / "classifier")
    assert classifier.config.multilabel and classifier.config.outputs == 1  # "No Finding" only
    assert all(bool(torch.isfinite(p).all()) for p in classifier.parameters())
