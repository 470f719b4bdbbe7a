"""Receptive-field geometry of the prototype encoder against hand-computed cases."""

import pytest
import torch

from patronus.models.presets import ENCODER_32_64, ENCODER_224
from patronus.nn import ProtoEncoder, ReceptiveField, receptive_field
from patronus.nn.proto_encoder import box_masks


def encoder_of(config, in_channels=1):
    return ProtoEncoder(
        in_channels, config.channels, config.kernel_sizes, config.strides, config.paddings
    )


def test_paper_32_and_64_px_geometry():
    # k3 s2 p1: rf 3, jump 2, start 0.5; then three k3 s1 p0: rf 7/11/15, start 2.5/4.5/6.5
    assert receptive_field([3], [2], [1]) == ReceptiveField(3, 2, 0.5)
    assert receptive_field([3, 3], [2, 1], [1, 0]) == ReceptiveField(7, 2, 2.5)
    encoder = encoder_of(ENCODER_32_64)
    assert encoder.receptive_field == ReceptiveField(size=15, jump=2, start=6.5)
    assert encoder.output_size((32, 32)) == (10, 10)
    assert encoder.output_size((64, 64)) == (26, 26)


def test_paper_224_px_geometry():
    # k5 s2 p1 twice: (224+2-5)//2+1 = 111, then 55; three k5 s1 p0: 51, 47, 43.
    # rf 5, 13, 29, 45, 61; jump 2, 4; start 1.5, 3.5, 11.5, 19.5, 27.5
    encoder = encoder_of(ENCODER_224)
    assert encoder.receptive_field == ReceptiveField(size=61, jump=4, start=27.5)
    assert encoder.output_size((224, 224)) == (43, 43)


@pytest.mark.parametrize(
    ("config", "size", "index", "expected"),
    [
        # 32 px: cell 0 centred at 6.5 covers [-1, 14) -> clamped [0, 14)
        (ENCODER_32_64, 32, 0, (0, 14)),
        # cell 1: centre 8.5, [1, 16)
        (ENCODER_32_64, 32, 1, (1, 16)),
        # last cell 9: centre 24.5, [17, 32)
        (ENCODER_32_64, 32, 9, (17, 32)),
        # 64 px, last cell 25: centre 56.5, [49, 64)
        (ENCODER_32_64, 64, 25, (49, 64)),
        # 224 px, cell 0: centre 27.5, [-3, 58) -> [0, 58)
        (ENCODER_224, 224, 0, (0, 58)),
        # 224 px, cell 21: centre 111.5, [81, 142)
        (ENCODER_224, 224, 21, (81, 142)),
        # 224 px, last cell 42: centre 195.5, [165, 226) -> [165, 224)
        (ENCODER_224, 224, 42, (165, 224)),
    ],
)
def test_cell_spans(config, size, index, expected):
    assert encoder_of(config).receptive_field.span(index, size) == expected


def test_patch_box_from_flat_index():
    encoder = encoder_of(ENCODER_32_64)
    # flat index 23 of a 10x10 map = row 2, col 3: rows [3, 18), cols [5, 20)
    assert encoder.patch_box(23, (32, 32)) == (3, 5, 18, 20)


@pytest.mark.parametrize(("config", "size"), [(ENCODER_32_64, 32), (ENCODER_224, 224)])
def test_patch_boxes_look_up_every_cell_as_patch_box_computes_it(config, size):
    encoder = encoder_of(config)
    height, width = encoder.output_size((size, size))
    cells = torch.randint(0, height * width, (3, 5, 7), generator=torch.Generator().manual_seed(0))
    cells[0, 0, :2] = torch.tensor([0, height * width - 1])  # the corner cells, clamped boxes
    boxes = encoder.patch_boxes(cells, (size, size))
    assert boxes.shape == (3, 5, 7, 4) and boxes.dtype == torch.long
    for cell, box in zip(cells.flatten().tolist(), boxes.reshape(-1, 4).tolist(), strict=True):
        assert tuple(box) == encoder.patch_box(cell, (size, size))
    assert encoder.patch_boxes(cells.to(torch.int32), (size, size)).equal(boxes)


def test_box_masks_cover_exactly_the_boxes():
    encoder = encoder_of(ENCODER_32_64)
    cells = torch.tensor([0, 9, 45, 99])  # corners and the middle of the 10 x 10 map
    masks = box_masks(encoder.patch_boxes(cells, (32, 32)), 32, 32)
    for cell, mask in zip(cells.tolist(), masks, strict=True):
        top, left, bottom, right = encoder.patch_box(cell, (32, 32))
        expected = torch.zeros(32, 32, dtype=torch.bool)
        expected[top:bottom, left:right] = True
        assert torch.equal(mask, expected) and 0 < mask.sum() < mask.numel()


def test_boxes_match_gradient_support():
    """The box is exactly the set of pixels a feature cell depends on (inside the image)."""
    torch.manual_seed(0)
    for config, size, cells in (
        (ENCODER_32_64, 32, [(0, 0), (4, 7), (9, 9)]),
        (ENCODER_224, 224, [(0, 0), (21, 30), (42, 42)]),
    ):
        encoder = encoder_of(config).double()
        for layer in encoder.features:
            if isinstance(layer, torch.nn.ReLU):
                layer.inplace = False
        image = torch.randn(1, 1, size, size, dtype=torch.float64, requires_grad=True)
        features = encoder.features[:-1](image)  # drop the last ReLU so no gradient dies there
        for row, col in cells:
            (grad,) = torch.autograd.grad(features[0, :, row, col].sum(), image, retain_graph=True)
            support = grad[0, 0].abs() > 0
            rows = support.any(1).nonzero().flatten()
            cols = support.any(0).nonzero().flatten()
            top, left, bottom, right = encoder.receptive_field.box(row, col, (size, size))
            assert (rows.min().item(), rows.max().item() + 1) == (top, bottom)
            assert (cols.min().item(), cols.max().item() + 1) == (left, right)


def test_too_small_image_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        encoder_of(ENCODER_224).output_size((40, 40))
