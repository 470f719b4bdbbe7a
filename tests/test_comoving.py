"""Co-moving edit directions (patronus.interpret.comoving) and co-moving edits."""

import numpy as np
import pytest
import torch

from patronus.interpret import (
    comoving_directions,
    edited_activations,
    visualize_prototypes,
)


def test_known_answer():
    """s1 = 2 s0 + 3 exactly, s2 uncorrelated with both: raising s0 by 1 moves s1 by 2 (by 1 at
    shrinkage 1), raising s1 by 1 moves s0 by 0.5, s2 moves with nothing."""
    s0 = torch.tensor([0.0, 1.0, 2.0, 3.0])
    reference = torch.stack([s0, 2 * s0 + 3, torch.tensor([1.0, -1.0, -1.0, 1.0])], dim=1)
    expected = torch.tensor([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(comoving_directions(reference), expected)
    expected[0, 1], expected[1, 0] = 1.0, 0.25
    torch.testing.assert_close(comoving_directions(reference, shrinkage=1.0), expected)


def test_shrinkage_zero_is_numpys_least_squares_slope():
    """Row J, column K: the slope of s_K fitted on s_J by numpy.polyfit, on random odd-sized,
    correlated activations."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    reference = torch.randn(53, 7, generator=generator, dtype=torch.float64) @ mixing - 12.0
    directions = comoving_directions(reference)
    assert directions.dtype == torch.float64
    data = reference.numpy()
    for j in range(7):
        for k in range(7):
            slope = np.polyfit(data[:, j], data[:, k], 1)[0]
            assert directions[j, k].item() == pytest.approx(slope, rel=1e-9, abs=1e-12)


def test_large_shrinkage_tends_to_the_plain_edit_and_constant_prototypes_get_it():
    reference = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    reference[:, 2] = -7.5  # a prototype that never varies
    directions = comoving_directions(reference, shrinkage=1e9)
    torch.testing.assert_close(directions, torch.eye(5), atol=1e-8, rtol=0)
    exact = comoving_directions(reference)
    assert torch.equal(exact[2], torch.eye(5)[2]) and torch.equal(exact[:, 2], torch.eye(5)[2])
    assert exact.dtype == torch.float32
    assert torch.equal(comoving_directions(reference[:, :1]), torch.ones(1, 1))  # one prototype


@pytest.mark.parametrize(
    ("reference", "shrinkage", "error"),
    [
        (torch.zeros(5), 0.0, ValueError),
        (torch.zeros(1, 3), 0.0, ValueError),
        (torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), 0.0, ValueError),
        (torch.zeros(4, 3), -0.5, ValueError),
        (torch.zeros(4, 3), float("inf"), ValueError),
        (torch.zeros(4, 3, dtype=torch.long), 0.0, TypeError),
    ],
)
def test_bad_input_is_refused(reference, shrinkage, error):
    with pytest.raises(error):
        comoving_directions(reference, shrinkage)


def test_edited_activations_move_the_others_along_and_set_s_j_exactly():
    generator = torch.Generator().manual_seed(2)
    activations = torch.randn(3, 4, generator=generator) - 10.0
    directions = torch.randn(4, 4, generator=generator)
    directions.fill_diagonal_(1.0)
    values = torch.tensor([-5.0, -6.0])
    edits = edited_activations(activations, [1, 3], values, directions).reshape(2, 3, 4)
    for row, (prototype, value) in enumerate(zip([1, 3], values, strict=True)):
        rise = value - activations[:, prototype]
        expected = activations + rise[:, None] * directions[prototype]
        expected[:, prototype] = value
        torch.testing.assert_close(edits[row], expected)
        assert torch.equal(edits[row, :, prototype], value.expand(3))
    plain = edited_activations(activations, [1, 3], values)
    assert torch.equal(edited_activations(activations, [1, 3], values, torch.eye(4)), plain)
    with pytest.raises(ValueError, match="directions"):
        edited_activations(activations, [1], values[:1], torch.eye(3))
    with pytest.raises(ValueError, match="directions"):
        edited_activations(activations, [1], values[:1], torch.full((4, 4), float("nan")))


def test_visualize_prototypes_decodes_the_co_moving_edits(tiny_inversion):
    model, inversion, reference = tiny_inversion
    bounds = reference.max(0).values
    plain = visualize_prototypes(model, inversion, bounds, prototypes=[0, 2])
    identity = visualize_prototypes(
        model, inversion, bounds, prototypes=[0, 2], directions=torch.eye(model.num_prototypes)
    )
    assert torch.equal(identity.edits, plain.edits)
    directions = comoving_directions(reference)
    comoving = visualize_prototypes(model, inversion, bounds, [0, 2], directions=directions)
    with torch.no_grad():
        s = edited_activations(inversion.activations, [0, 2], bounds[[0, 2]], directions)
        expected = inversion.decode(model, s, inversion.x_T.repeat(2, 1, 1, 1))
    torch.testing.assert_close(comoving.edits.reshape(expected.shape), expected)
    assert not torch.equal(comoving.edits, plain.edits)
