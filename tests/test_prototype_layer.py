"""PrototypeLayer, activations and the prototype-distinct loss."""

import math

import pytest
import torch

from patronus.nn import PrototypeLayer, distance_to_activation, prototype_distinct_loss
from patronus.testing import brute_force_distances


def test_forward_outputs_and_log_activation():
    layer = PrototypeLayer(7, 5)
    features = torch.randn(3, 5, 4, 6)
    out = layer(features)
    assert out.activations.shape == out.min_distances.shape == out.patch_index.shape == (3, 7)
    expected = brute_force_distances(features, layer.prototypes.detach()).min(2).values
    torch.testing.assert_close(out.min_distances.double(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        out.activations, torch.log((out.min_distances + 1) / (out.min_distances + 1e-4))
    )


def test_activation_bounds_and_linear_variant():
    zero = torch.zeros(1)
    assert distance_to_activation(zero).item() == pytest.approx(math.log(1e4), rel=1e-6)
    assert distance_to_activation(torch.tensor([3.0]), "linear").item() == -3.0
    for eps in (0.0, -1e-4, float("nan")):
        with pytest.raises(ValueError, match="eps must be > 0"):
            PrototypeLayer(3, 4, eps=eps)
    with pytest.raises(ValueError, match="activation must be one of"):
        distance_to_activation(zero, "exp")
    with pytest.raises(ValueError, match="activation must be one of"):
        PrototypeLayer(2, 2, activation="relu")


def test_prototypes_initialised_uniform_unit_interval():
    layer = PrototypeLayer(100, 128)
    assert layer.prototypes.shape == (100, 128)
    assert layer.prototypes.min() >= 0 and layer.prototypes.max() < 1
    assert abs(layer.prototypes.mean().item() - 0.5) < 0.02


def test_distance_map_and_check_finite():
    layer = PrototypeLayer(3, 4, check_finite=True)
    features = torch.randn(2, 4, 5, 5)
    assert layer.distance_map(features).shape == (2, 3, 5, 5)
    features[1, 2, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(features)


def test_gradients_reach_prototypes_and_features():
    layer = PrototypeLayer(4, 3)
    features = torch.randn(2, 3, 3, 3, requires_grad=True)
    layer(features).activations.sum().backward()
    assert layer.prototypes.grad.abs().sum() > 0
    # only the winning patches receive gradient
    assert (features.grad.flatten(2).abs().sum(1) > 0).sum() <= 2 * 4


def test_distinct_loss_known_values():
    orthogonal = torch.eye(4)
    assert prototype_distinct_loss(orthogonal).item() == 0.0  # 1 - |cos| = 1 > margin
    parallel = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])  # |cos| = 1 -> distance 0 -> hinge 0.2
    assert prototype_distinct_loss(parallel).item() == pytest.approx(0.2)
    # cos = 0.9 -> distance 0.1 -> hinge 0.1 for both
    pair = torch.tensor([[1.0, 0.0], [0.9, math.sqrt(1 - 0.81)]])
    assert prototype_distinct_loss(pair).item() == pytest.approx(0.1, abs=1e-6)
    assert prototype_distinct_loss(torch.ones(1, 3)).item() == 0.0
