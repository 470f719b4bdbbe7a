"""Our FID Inception-v3 against pytorch-fid's own network, on stand-in weights and real PNGs.

``tests/fixtures/make_fid_inception_features.py`` ran pytorch-fid 0.3.0 (torchvision's Inception3
with pytorch-fid's FID blocks, its ``get_activations`` reading the PNGs) on the deterministic
weights of ``fid_inception_weights.py``; this test builds the same weights from the names and
shapes alone, loads them the way a user loads the real file, reads the same PNGs with our loader
and compares the pool3 features.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fid_inception_weights import fid_inception_weights

from patronus.data import load_image
from patronus.eval.inception import FIDInception, load_fid_inception

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fid-inception"


def _reference() -> tuple[dict[str, list[int]], dict[str, np.ndarray]]:
    network = json.loads((FIXTURE / "network.json").read_text())
    with np.load(FIXTURE / "features.npz") as features:
        return network["shapes"], {kind: features[kind] for kind in features.files}


def test_parameter_names_and_shapes_are_pytorch_fids():
    """The names and shapes of the Inception3 pytorch-fid loads its weight file into."""
    shapes, _ = _reference()
    ours = {name: list(value.shape) for name, value in FIDInception().state_dict().items()}
    assert ours == shapes


def test_features_match_pytorch_fid_on_its_own_reading_of_the_pngs(tmp_path):
    """RGB images of an odd, non-square size (resized to 299 x 299 inside) and gray images read
    with one channel, as the Fashion-MNIST loader gives them (pytorch-fid converts them to RGB)."""
    shapes, reference = _reference()
    torch.save(fid_inception_weights(shapes), tmp_path / "stand-in.pth")
    network = load_fid_inception(tmp_path / "stand-in.pth")
    for kind, channels in (("rgb", 3), ("gray", 1)):
        files = sorted(FIXTURE.glob(f"{kind}-*.png"))
        images = torch.stack([load_image(path, channels, None) for path in files])
        assert images.shape[1] == channels
        with torch.no_grad():
            features = network(images).double().numpy()
        expected = reference[kind]
        # features of different images differ by ~0.02 on average; float32 rounding by ~1e-6
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)


def test_evaluate_fid_with_inception_weights_measures_the_written_pngs(tiny_run, tmp_path):
    """`patronus evaluate fid --inception-weights FILE`: the FID of the PNGs it wrote, in the
    pool3 features of the network the file holds, against the first test images."""
    from patronus import load_model
    from patronus.cli import main
    from patronus.cli.loading import dataset_builder
    from patronus.data import ImageFolder
    from patronus.eval.generation import distances

    shapes, _ = _reference()
    weights = tmp_path / "stand-in.pth"
    torch.save(fid_inception_weights(shapes), weights)
    out = tmp_path / "fid"
    command = ["evaluate", "fid", str(tiny_run), "--num", "6", "--steps", "2",
               "--inception-weights", str(weights), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(command) == 0
    result = json.loads((out / "fid.json").read_text())
    assert result["features"] == "Inception-v3 pool3" and result["feature_dim"] == 2048
    written = ImageFolder(out / "samples", image_size=24)
    _, build = dataset_builder(tiny_run, load_model(tiny_run))
    reference = build("test")
    recomputed = distances(
        load_fid_inception(weights),
        torch.stack([written[i][0] for i in range(6)]),
        torch.stack([reference[i][0] for i in range(6)]),
    )
    assert result["fid"] == pytest.approx(recomputed["fid"], rel=1e-6)
    assert not (out / "classifier").exists()  # no classifier was trained for it
