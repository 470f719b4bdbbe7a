"""Edits confined to a region (patronus.interpret.region): masks, blended decoding, and the
region option of visualize_prototypes."""

import pytest
import torch

from patronus import Patronus
from patronus.diffusion.timesteps import respaced_timesteps
from patronus.interpret import edited_activations, invert_images, visualize_prototypes
from patronus.interpret.region import decode_in_region, region_masks
from patronus.interpret.trust import fidelity_headline, trusted


def test_region_masks_known_answer():
    """Box rows 2-5, columns 3-7 (half-open 2:6, 3:8) in a 12-pixel image, margin 1: ones on rows
    1-6 / columns 2-8 smoothed by a 3 x 3 binomial, zeros two pixels beyond."""
    masks = region_masks(torch.tensor([[2, 3, 6, 8]]), 12, margin=1)
    assert masks.shape == (1, 1, 12, 12) and masks.dtype == torch.float32
    m = masks[0, 0]
    assert torch.equal(m[2:6, 3:8], torch.ones(4, 5))  # the box itself stays whole
    assert m[:, :1].abs().max() == 0 and m[:, 10:].abs().max() == 0
    assert m[9:].abs().max() == 0
    # the edge is the widened box smoothed by (1, 2, 1) x (1, 2, 1) / 16
    assert m[1, 2].item() == pytest.approx(9 / 16)  # the widened box's corner: (2 + 1) x (2 + 1)
    assert m[0, 1].item() == pytest.approx(1 / 16)  # diagonally outside it: 1 x 1
    assert m[3, 1].item() == pytest.approx(4 / 16)  # one column outside: (1 + 2 + 1) x 1
    assert ((m >= 0) & (m <= 1)).all()


def test_region_masks_clamp_at_the_border_and_refuse_bad_input():
    masks = region_masks(torch.tensor([[0, 0, 4, 4], [0, 0, 10, 10]]), 10, margin=0)
    assert masks[0, 0, 0, 0] == 1.0 and masks[1].min() == 1.0  # the whole image: all ones
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        region_masks(torch.zeros(3, 3, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="margin"):
        region_masks(torch.zeros(1, 4, dtype=torch.long), 10, margin=-1)


@pytest.fixture(scope="module")
def tiny(tiny_inversion):
    model, inversion, reference = tiny_inversion
    return model, inversion, reference.max(0).values


def test_masks_of_ones_give_the_plain_edit_and_zeros_the_reconstruction(tiny):
    model, inversion, bounds = tiny
    s = edited_activations(inversion.activations, [1, 4], bounds[[1, 4]])
    size = model.config.image_size
    with torch.no_grad():
        plain = inversion.decode(model, s, inversion.x_T.repeat(2, 1, 1, 1), 3.0)
        reconstruction = inversion.decode(model, inversion.activations)
    ones, zeros = torch.ones(6, 1, size, size), torch.zeros(6, 1, size, size)
    assert torch.equal(decode_in_region(model, inversion, s, ones, 3.0), plain)
    assert torch.equal(
        decode_in_region(model, inversion, s, zeros), reconstruction.repeat(2, 1, 1, 1)
    )


def test_blended_decoding_against_ddim_written_out_in_float64(tiny):
    """The DDIM update x' = sqrt(a') x0 + sqrt(1 - a') eps, x0 = (x - sqrt(1 - a) eps) / sqrt(a),
    for the edit and for the unedited images, then x' = m x'_edit + (1 - m) x'_unedited, with a
    random soft mask, every network call in float64."""
    model, inversion32, bounds = tiny
    model = Patronus(model.config).eval()
    model.load_state_dict(tiny[0].state_dict())
    model.double()
    inversion = invert_images(model, inversion32.images.double(), inversion32.steps)
    s = edited_activations(inversion.activations, [2], bounds[[2]].double())
    generator = torch.Generator().manual_seed(1)
    size = model.config.image_size
    masks = torch.rand(3, 1, size, size, generator=generator, dtype=torch.float64)
    got = decode_in_region(model, inversion, s, masks)

    abar = model.schedule.alphas_cumprod.double()
    levels = respaced_timesteps(model.schedule.timesteps, inversion.steps)[::-1]
    x, kept = inversion.x_T.clone(), inversion.x_T.clone()
    with torch.no_grad():
        for current, target in zip(levels, [*levels[1:], -1], strict=True):
            a = abar[current]
            a_next = abar[target] if target >= 0 else torch.tensor(1.0, dtype=torch.float64)
            t = torch.full((3,), current, dtype=torch.long)

            def ddim(x, activations):
                eps = model(x, t, activations)  # noqa: B023
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()  # noqa: B023
                return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps  # noqa: B023

            kept = ddim(kept, inversion.activations)
            x = masks * ddim(x, s) + (1 - masks) * kept
    torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)


def test_bad_input_is_refused(tiny):
    model, inversion, bounds = tiny
    size = model.config.image_size
    s = edited_activations(inversion.activations, [0], bounds[[0]])
    with pytest.raises(ValueError, match="not edits"):
        decode_in_region(model, inversion, s[:2], torch.ones(2, 1, size, size))
    with pytest.raises(ValueError, match="masks must be"):
        decode_in_region(model, inversion, s, torch.ones(3, size, size))
    with pytest.raises(ValueError, match="unedited must hold"):
        decode_in_region(
            model, inversion, s, torch.ones(3, 1, size, size), unedited=[inversion.x_T]
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decode_in_region(model, inversion, s, torch.full((3, 1, size, size), 1.5))


def test_visualize_prototypes_in_region_changes_nothing_outside_the_boxes(tiny):
    """Outside the box where J fires in the original image (plus the margin and the soft edge)
    every edit equals its image's reconstruction exactly; inside, edits differ from it."""
    model, inversion, bounds = tiny
    vis = visualize_prototypes(model, inversion, bounds, prototypes=[0, 3], region=True)
    with torch.no_grad():
        fired = model.patch_boxes(model.prototype_output(inversion.images).patch_index)
    size = model.config.image_size
    for row, prototype in enumerate([0, 3]):
        masks = region_masks(fired[:, prototype], size)
        outside = (masks == 0).expand_as(vis.edits[row])
        assert outside.any()
        assert torch.equal(vis.edits[row][outside], vis.reconstructions[outside])
    assert not torch.equal(vis.edits, vis.reconstructions.expand_as(vis.edits))


def _summary(ratio: float, confined: bool) -> dict:
    return {"median_fidelity": 0.9, "share_reaching_half": 0.85, "inside_outside_ratio": ratio,
            "edits_with_a_request": 40, "confined_to_box": confined}  # fmt: skip


def test_confined_edits_are_not_judged_on_locality():
    """A ratio made by construction neither earns nor costs trust; the sentence says so."""
    assert not trusted(_summary(1.2, confined=False))
    assert trusted(_summary(1.2, confined=True))
    assert not trusted({**_summary(50.0, confined=True), "median_fidelity": 0.1})
    assert "1.2x as much inside" in fidelity_headline(_summary(1.2, confined=False))
    sentence = fidelity_headline(_summary(50.0, confined=True))
    assert "confined to the prototype's box" in sentence and "50.0x" not in sentence
