"""Shared fixtures. Without a GPU, Triton kernels run under the interpreter (set before import)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from patronus.models.presets import get_preset


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-check` on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_config():
    return get_preset("synthetic-tiny").model


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder of the tiny preset trained for 30 steps on synthetic shapes (read-only)."""
    from patronus import Patronus
    from patronus.data import SyntheticShapes
    from patronus.train import TrainConfig, Trainer

    torch.manual_seed(0)
    preset = get_preset("synthetic-tiny")
    run_dir = tmp_path_factory.mktemp("tiny_run")
    dataset = SyntheticShapes(128, preset.model.image_size, preset.model.image_channels)
    config = TrainConfig(max_steps=30, batch_size=16, learning_rate=2e-3, progress=False, amp="off")
    metadata = {"preset": "synthetic-tiny", "data": {"name": "synthetic", "seed": 0}}
    Trainer(Patronus(preset.model), dataset, config, run_dir, "cpu", metadata).fit()
    return run_dir


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A writable copy of ``tiny_run``."""
    return shutil.copytree(tiny_run, tmp_path / "run")


@pytest.fixture(scope="module")
def tiny_inversion():
    """An untrained synthetic-tiny model (eval), 3 random images inverted in 3 steps, and the
    activations of 16 random reference images: (model, inversion, reference (16, P))."""
    from patronus import Patronus
    from patronus.interpret import invert_images

    torch.manual_seed(0)
    model = Patronus(get_preset("synthetic-tiny").model).eval()
    images = torch.rand(3, *model.config.image_shape) * 2 - 1
    with torch.no_grad():
        reference = model.encode(torch.rand(16, *model.config.image_shape) * 2 - 1)
    return model, invert_images(model, images, steps=3), reference
