"""Edit fidelity on constructed visualisations whose answers are known by hand."""

import math

import pytest
import torch

from patronus.interpret.fidelity import edit_fidelity
from patronus.interpret.what import PrototypeVisualization


def visualization(before, after, bounds, edits, reconstructions, boxes):
    count = before.shape[0]
    return PrototypeVisualization(
        prototypes=list(range(count)),
        originals=reconstructions.clone(),
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
