"""Reference prototype ops against a float64 brute force."""

import pytest
import torch

from patronus import _backend
from patronus.ops import (
    prototype_distance_map,
    prototype_distance_map_ref,
    prototype_min_distance,
    prototype_min_distance_ref,
)
from patronus.testing import brute_force_distances, tolerance

SHAPES = [  # (B, D, H, W, P), deliberately odd
    (3, 7, 5, 3, 11),
    (2, 1, 4, 4, 3),  # D = 1
    (4, 13, 1, 1, 5),  # H = W = 1
    (1, 9, 6, 7, 1),  # P = 1
    (5, 128, 10, 10, 30),  # the Fashion-MNIST paper shape
]


def oracle(features, prototypes):
    distances = brute_force_distances(features, prototypes)  # (B, P, N)
    values, index = distances.min(dim=2)
    return values, index, distances


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_min_distance_matches_brute_force(shape, dtype):
    batch, dim, height, width, num = shape
    features = torch.randn(batch, dim, height, width).to(dtype)
    prototypes = torch.rand(num, dim).to(dtype)
    min_dist, index = prototype_min_distance(features, prototypes)
    expected, expected_index, distances = oracle(features, prototypes)
    assert min_dist.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert index.dtype == torch.int64 and index.shape == (batch, num)
    torch.testing.assert_close(min_dist.double(), expected, **tolerance(torch.float32))
    # the chosen patch is a minimiser up to the half-precision rounding of the inputs
    chosen = distances.gather(2, index[..., None])[..., 0]
    torch.testing.assert_close(chosen, expected, **tolerance(torch.float32))
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(index, expected_index)


def test_patch_layout_and_channels_last_and_noncontiguous():
    features = torch.randn(3, 6, 5, 7)
    prototypes = torch.rand(4, 6)
    expected, expected_index, _ = oracle(features, prototypes)
    patches = features.flatten(2).transpose(1, 2).contiguous()  # (B, N, D)
    variants = [
        features.to(memory_format=torch.channels_last),
        patches,
        torch.randn(3, 6, 5, 14)[..., ::2].copy_(features),  # strided view
        features.transpose(2, 3).contiguous().transpose(2, 3),  # non-contiguous H/W
    ]
    for variant in variants:
        min_dist, index = prototype_min_distance(variant, prototypes)
        torch.testing.assert_close(min_dist.double(), expected, **tolerance(torch.float32))
        assert torch.equal(index, expected_index)


def test_ties_take_the_smallest_index():
    prototypes = torch.rand(5, 8)
    same = torch.randn(8)
    features = same[None, :, None, None].expand(2, 8, 4, 5).contiguous()
    _, index = prototype_min_distance(features, prototypes)
    assert torch.equal(index, torch.zeros_like(index))
    # duplicate the winning patch of each prototype at a later position: the first one stays
    features = torch.randn(1, 8, 6, 6)
    _, first = prototype_min_distance(features, prototypes)
    flat = features.flatten(2).clone()
    for p in range(5):
        flat[0, :, 35] = flat[0, :, first[0, p]]
        _, again = prototype_min_distance(flat.reshape(1, 8, 6, 6), prototypes)
        assert again[0, p] == min(first[0, p].item(), 35)


def test_near_zero_distances_do_not_cancel():
    """A patch within 1e-3 of a large-norm prototype: the exact recomputation keeps ~1e-6."""
    prototypes = torch.full((1, 64), 100.0)
    features = torch.full((1, 64, 2, 2), 50.0)
    features[0, :, 1, 0] = 100.0 + 1e-3 * torch.linspace(-1, 1, 64)
    min_dist, index = prototype_min_distance(features, prototypes)
    expected = (features[0, :, 1, 0].double() - 100.0).square().sum()
    assert index.item() == 2
    torch.testing.assert_close(min_dist[0, 0].double(), expected, rtol=1e-3, atol=0)
    # the norm-expansion form alone loses it at this magnitude (error >= the value itself)
    naive = features[0, :, 1, 0].square().sum() - 2 * 100 * features[0, :, 1, 0].sum() + 64e4
    assert abs(naive.item() - expected.item()) >= expected.item()


def test_empty_batch():
    min_dist, index = prototype_min_distance(torch.randn(0, 4, 3, 3), torch.rand(2, 4))
    assert min_dist.shape == (0, 2) and index.shape == (0, 2)
    assert prototype_distance_map(torch.randn(0, 4, 3, 3), torch.rand(2, 4)).shape == (0, 2, 3, 3)


@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 6), (1, 1, 2, 2, 1)])
def test_gradients_match_brute_force(shape):
    batch, dim, height, width, num = shape
    features = torch.randn(batch, dim, height, width, dtype=torch.float64, requires_grad=True)
    prototypes = torch.rand(num, dim, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(batch, num, dtype=torch.float64)
    min_dist, _ = prototype_min_distance(features, prototypes)
    grads = torch.autograd.grad((min_dist * weights).sum(), (features, prototypes))
    # brute force with autograd: min over the direct sum((z - p)^2)
    f2 = features.detach().requires_grad_()
    p2 = prototypes.detach().requires_grad_()
    brute = brute_force_distances(f2, p2).min(dim=2).values
    expected_grads = torch.autograd.grad((brute * weights).sum(), (f2, p2))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck():
    features = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    prototypes = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, p: prototype_min_distance(f, p)[0], (features, prototypes), fast_mode=True
    )
    assert torch.autograd.gradcheck(prototype_distance_map, (features, prototypes), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_distance_map_matches_brute_force(dtype):
    features = torch.randn(2, 9, 5, 3).to(dtype)
    prototypes = torch.rand(7, 9).to(dtype)
    result = prototype_distance_map(features, prototypes)
    assert result.shape == (2, 7, 5, 3) and result.dtype == torch.float32
    expected = brute_force_distances(features, prototypes).reshape(2, 7, 5, 3)
    # the map uses the norm expansion: error grows with the norms (here ~10), not with d
    torch.testing.assert_close(result.double(), expected, atol=1e-4, rtol=1e-5)
    assert (result >= 0).all()


def test_reference_names_are_the_public_results():
    features, prototypes = torch.randn(2, 4, 3, 3), torch.rand(5, 4)
    public = prototype_min_distance(features, prototypes)
    reference = prototype_min_distance_ref(features, prototypes)
    for got, want in zip(public, reference, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(
        prototype_distance_map(features, prototypes),
        prototype_distance_map_ref(features, prototypes),
    )


@pytest.mark.parametrize(
    ("features", "prototypes", "error", "match"),
    [
        (torch.randn(2, 4, 3, 3), torch.rand(5, 3), ValueError, "does not match"),
        (torch.randn(2, 4), torch.rand(5, 4), ValueError, r"\(B, D, H, W\)"),
        (torch.randn(2, 4, 3, 3), torch.rand(5, 4, 1), ValueError, r"\(P, D\)"),
        (torch.randint(0, 5, (2, 4, 3, 3)), torch.rand(5, 4), TypeError, "float"),
        (torch.randn(2, 4, 0, 3), torch.rand(5, 4), ValueError, "no patches"),
    ],
)
def test_bad_inputs_raise_clear_errors(features, prototypes, error, match):
    with pytest.raises(error, match=match):
        prototype_min_distance(features, prototypes)


def test_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="one device"):
        prototype_min_distance(torch.randn(1, 2, 2, 2), torch.rand(3, 2, device="meta"))


def test_nan_propagates_inside_the_op():
    """A NaN patch wins the min (as torch.min does) and its distance is NaN; others stay finite."""
    features = torch.randn(2, 3, 2, 2)
    features[0, 0, 1, 1] = float("nan")
    min_dist, index = prototype_min_distance(features, torch.rand(2, 3))
    assert torch.isnan(min_dist[0]).all() and torch.equal(index[0], torch.tensor([3, 3]))
    assert torch.isfinite(min_dist[1]).all()


def test_forced_backends(monkeypatch):
    features, prototypes = torch.randn(1, 2, 2, 2), torch.rand(3, 2)
    monkeypatch.setenv("PATRONUS_BACKEND", "torch")
    prototype_min_distance(features, prototypes)
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")
    with pytest.raises(_backend.BackendUnavailableError, match="no triton implementation"):
        prototype_min_distance(features, prototypes)
    monkeypatch.setenv("PATRONUS_BACKEND", "fastest")
    with pytest.raises(_backend.BackendUnavailableError, match="not a backend"):
        prototype_min_distance(features, prototypes)
