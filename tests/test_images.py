"""PNG grids without torchvision."""

import numpy as np
import pytest
import torch
from PIL import Image

from patronus.data import load_image
from patronus.utils import make_grid, save_grid


def test_grid_layout_and_values(tmp_path):
    images = torch.stack([torch.full((3, 4, 5), v) for v in (-1.0, 0.0, 1.0)])
    grid = make_grid(images, nrow=2, padding=1)
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3) and grid.dtype == torch.uint8
    assert grid[1, 1].tolist() == [0, 0, 0]
    assert grid[1, 7].tolist() == [128, 128, 128]
    assert grid[6, 1].tolist() == [255, 255, 255]
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2, padding=1)
    assert np.array_equal(np.array(Image.open(path)), grid.numpy())


def test_gray_round_trip(tmp_path):
    image = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    path = save_grid(image, tmp_path / "g.png", padding=0)
    loaded = load_image(path, channels=1, size=None)
    torch.testing.assert_close(loaded, image[0], atol=1 / 127.5, rtol=0)


def test_out_of_range_values_are_clamped_and_empty_batches_refused():
    assert make_grid(torch.full((1, 1, 2, 2), 5.0), padding=0).max() == 255
    with pytest.raises(ValueError, match="non-empty"):
        make_grid(torch.zeros(0, 1, 2, 2))
