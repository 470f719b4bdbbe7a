"""Edit fidelity on constructed visualisations whose answers are known by hand."""

import math

import pytest
import torch

from patronus.interpret.fidelity import edit_fidelity
from patronus.interpret.what import PrototypeVisualization


def visualization(before, after, bounds, edits, reconstructions, boxes, originals=None):
    count = before.shape[0]
    return PrototypeVisualization(
        prototypes=list(range(count)),
        originals=reconstructions.clone() if originals is None else originals,
        reconstructions=reconstructions,
        edits=edits,
        before=before,
        edit_activation=after,
        boxes=boxes,
        best=(after - before).argmax(1),
        bounds=bounds,
        network_evaluations_per_edit=2,
    )


def test_fidelity_and_where_the_image_changed():
    # 2 prototypes x 3 images, 1 x 8 x 8 images
    before = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 5.0]])
    bounds = torch.tensor([2.0, 4.0])
    # requests: [[2, 1, -1 (none)], [2, 2, -1 (none)]]
    after = torch.tensor([[1.0, 4.0, 3.5], [1.0, 2.5, 5.0]])
    # achieved: [[1, 3, .5], [-1, .5, 0]] -> raw [[.5, 3, nan], [-.5, .25, nan]]
    reconstructions = torch.zeros(3, 1, 8, 8)
    edits = torch.zeros(2, 3, 1, 8, 8)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6], [0, 0, 8, 8]]).expand(2, 3, 4).clone()
    edits[0, 0, :, 0:4, 0:4] = 0.8  # all the change inside the box (16 pixels)
    edits[0, 0, :, 7, 7] = -0.4  # and one pixel outside (48 pixels outside)
    edits[1, 1] = 0.2  # a uniform change: inside = outside
    fidelity = edit_fidelity(visualization(before, after, bounds, edits, reconstructions, boxes))

    expected_raw = torch.tensor([[0.5, 3.0, math.nan], [-0.5, 0.25, math.nan]])
    torch.testing.assert_close(fidelity.raw, expected_raw, equal_nan=True)
    torch.testing.assert_close(
        fidelity.fidelity, expected_raw.clamp(-1, 2), equal_nan=True
    )  # 3.0 -> 2.0
    torch.testing.assert_close(fidelity.inside[0, 0], torch.tensor(0.8))
    torch.testing.assert_close(fidelity.outside[0, 0], torch.tensor(0.4 / 48))
    torch.testing.assert_close(fidelity.inside[1, 1], torch.tensor(0.2))
    torch.testing.assert_close(fidelity.outside[1, 1], torch.tensor(0.2))
    assert math.isnan(fidelity.outside[0, 2])  # the box is the whole image

    summary = fidelity.summary()
    assert summary["edits"] == 6 and summary["edits_with_a_request"] == 4
    assert summary["median_fidelity"] == pytest.approx(0.25)  # of [.5, 2, -.5, .25]: lower middle
    assert summary["share_reaching_half"] == pytest.approx(0.5)  # .5 and 2.0
    # the 4 edits with pixels outside their box: inside [.8, 0, 0, .2], outside [.4/48, 0, 0, .2]
    inside, outside = (0.8 + 0.2) / 4, (0.4 / 48 + 0.2) / 4
    assert summary["inside_outside_ratio"] == pytest.approx(inside / outside)
    # per prototype, the lower middle of its requested edits: [.5, 2] and [-.5, .25]
    torch.testing.assert_close(fidelity.per_prototype(), torch.tensor([0.5, -0.5]))


def test_summary_holds_the_median_reconstruction_mse_and_trust_needs_a_faithful_one():
    """Edits start from the unedited decode: when it does not reproduce the image (too few
    DDIM steps), the edits are not judged, however their numbers look."""
    from patronus.interpret.report_page import _fidelity_box
    from patronus.interpret.trust import RECONSTRUCTION_BAR, fidelity_headline, trusted

    before, after = torch.zeros(1, 3), torch.ones(1, 3)  # every edit delivers its request
    edits = torch.zeros(1, 3, 1, 8, 8)
    edits[..., :4, :4] = 0.5  # all inside the box
    boxes = torch.tensor([0, 0, 4, 4]).expand(1, 3, 4).clone()
    originals = torch.zeros(3, 1, 8, 8)
    originals[0] += 0.1  # per-image MSE 0.01, 0.09, 0.25: median 0.09
    originals[1] += 0.3
    originals[2] -= 0.5
    vis = visualization(before, after, torch.ones(1), edits, torch.zeros(3, 1, 8, 8), boxes,
                        originals)  # fmt: skip
    fidelity = edit_fidelity(vis)
    torch.testing.assert_close(fidelity.reconstruction_mse, torch.tensor([0.01, 0.09, 0.25]))
    summary = fidelity.summary()
    assert summary["reconstruction_mse"] == pytest.approx(0.09)
    assert summary["median_fidelity"] == 1.0 and summary["share_reaching_half"] == 1.0
    assert summary["inside_outside_ratio"] == math.inf
    assert RECONSTRUCTION_BAR < 0.09 and not trusted(summary)
    sentence = fidelity_headline(summary)
    assert "do not reproduce the images (median reconstruction MSE 0.09 > 0.05" in sentence
    assert "more DDIM steps" in sentence
    box = _fidelity_box(summary)
    assert "Not judged here: the unedited decodes do not reproduce the images" in box
    assert "<td>0.09</td><td>&lt;= 0.05</td>" in box.replace("\n", "")
    faithful = {**summary, "reconstruction_mse": 0.004}
    assert trusted(faithful) and "deliver what they ask for" in fidelity_headline(faithful)
    assert "Not judged" not in _fidelity_box(faithful) and "0.004" in _fidelity_box(faithful)
    unknown = {key: value for key, value in summary.items() if key != "reconstruction_mse"}
    assert trusted(unknown)  # summaries written before the MSE was recorded
    as_json = {**summary, "reconstruction_mse": None}  # NaN as finite_json writes it
    assert trusted(as_json) and "unedited decodes" not in _fidelity_box(as_json)
