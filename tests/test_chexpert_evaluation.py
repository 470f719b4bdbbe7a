"""`evaluate probes` and `diagnose` on a CheXpert layout labelled as the real CSVs are: most
findings unmentioned (empty) or uncertain (-1.0), so hardly an image has all 14 known."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from patronus.cli import main
from patronus.data.chexpert import OBSERVATIONS


def write_sparse_chexpert(root, count=60, seed=0):
    """``count`` frontal images with each finding 1.0, 0.0, -1.0 or empty (40% empty, 10%
    uncertain); Cardiomegaly is always mentioned and shows in the pixels (a bright disc)."""
    rng = np.random.default_rng(seed)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
    rows = []
    for i in range(count):
        relative = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        labels = rng.choice(["1.0", "0.0", "-1.0", ""], len(OBSERVATIONS), p=[0.25, 0.25, 0.1, 0.4])
        labels[2] = "1.0" if i % 2 else "0.0"  # Cardiomegaly
        pixels = rng.integers(0, 60, (64, 64)).astype(np.uint8)
        if i % 2:
            yy, xx = np.mgrid[:64, :64]
            pixels[(yy - 32) ** 2 + (xx - 32) ** 2 < 200] = 230
        path = root.parent / relative
        path.parent.mkdir(parents=True)
        Image.fromarray(pixels).save(path)
        rows.append([relative, "Female", "60", "Frontal", "AP", *labels])
    for split in ("train", "valid"):
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])


def test_probes_and_diagnosis_use_every_image_that_has_the_attribute(tmp_path):
    """Both kept only the images with all 14 findings known: none here (TAD failed on its
    folds with a traceback, the diagnosis had nothing to judge), and CheXpert's findings were
    called attribute_0 .. attribute_13 (`--target Cardiomegaly` was an unknown attribute)."""
    from dataclasses import replace

    from patronus import Patronus, save_model
    from patronus.data import CheXpert
    from patronus.models.presets import get_preset

    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    write_sparse_chexpert(root)
    labels = CheXpert(root).labels
    assert not bool(((labels == 0) | (labels == 1)).all(1).any())  # no image with all 14 known
    torch.manual_seed(0)
    model = Patronus(replace(get_preset("synthetic-tiny").model, image_channels=1)).eval()
    run = tmp_path / "run"
    save_model(model, run, metadata={"data": {"name": "chexpert", "data_dir": str(root)}})

    probes = tmp_path / "probes"
    assert main(["evaluate", "probes", str(run), "--no-progress", "--out", str(probes)]) == 0
    result = json.loads((probes / "probes.json").read_text())
    cardiomegaly = result["tad"]["attributes"]["Cardiomegaly"]
    assert cardiomegaly["best_auroc"] > 0.75  # the disc: known on every image
    assert result["probes"]["Cardiomegaly"]["folds"] == 5
    known = ((labels == 0) | (labels == 1)).sum(0)
    for name, count in zip(OBSERVATIONS, known.tolist(), strict=True):
        assert result["probes"][name]["folds"] > 0 or count < 10, name

    diagnosis = tmp_path / "diagnosis"
    command = ["diagnose", str(run), "--target", "Cardiomegaly", "--no-progress"]
    assert main([*command, "--out", str(diagnosis)]) == 0
    written = json.loads((diagnosis / "diagnosis.json").read_text())
    phis = {s["attribute"]: s["phi"] for s in written["suspects"]}
    for a, name in enumerate(OBSERVATIONS):  # each pair on the images that have both
        if name == "Cardiomegaly":
            continue
        both = ((labels[:, [2, a]] == 0) | (labels[:, [2, a]] == 1)).all(1)
        target, other = labels[both, 2].double(), labels[both, a].double()
        expected = (
            0.0
            if target.std() == 0 or other.std() == 0
            else float(torch.corrcoef(torch.stack([target, other]))[0, 1])
        )
        assert phis[name] == pytest.approx(expected), name
