"""Fréchet distance against scipy's float64 sqrtm, torchmetrics and closed forms; KID against
torchmetrics and its unbiasedness."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from patronus.eval.frechet import feature_statistics, frechet_distance, kernel_distance


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The pytorch-fid formula with scipy.linalg.sqrtm, in float64."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean.real
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_matches_scipy_on_random_statistics():
    generator = torch.Generator().manual_seed(0)
    for dim in (3, 17, 64):
        a = torch.randn(500, dim, generator=generator, dtype=torch.float64)
        b = torch.randn(400, dim, generator=generator, dtype=torch.float64) @ torch.randn(
            dim, dim, generator=generator, dtype=torch.float64) * 0.5 + 0.3  # fmt: skip
        mu1, s1 = feature_statistics(a)
        mu2, s2 = feature_statistics(b)
        expected = scipy_frechet(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_closed_forms():
    sigma = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    mu = torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-10)
    shift = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(25.0, abs=1e-10)
    # isotropic Gaussians: d = ||mu||^2 + F (s1 + s2 - 2 sqrt(s1 s2))
    eye = torch.eye(4, dtype=torch.float64)
    value = frechet_distance(torch.zeros(4), 4 * eye, torch.zeros(4), 9 * eye)
    assert value == pytest.approx(4 * (4 + 9 - 2 * 6), abs=1e-10)


def test_statistics_are_unbiased_covariance():
    features = torch.randn(50, 3, dtype=torch.float64)
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(mu.numpy(), features.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(features.numpy(), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(torch.randn(1, 3))


def test_kid_is_unbiased_for_one_distribution():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(2000, 16, generator=generator)
    b = torch.randn(2000, 16, generator=generator)
    mean, std = kernel_distance(a, b, subsets=50, subset_size=500, generator=generator)
    assert abs(mean) < 3 * std / np.sqrt(50) + 1e-3  # centred on 0, not biased upwards
    shifted, _ = kernel_distance(a, b + 0.5, subsets=20, subset_size=500, generator=generator)
    assert shifted > 10 * abs(mean) and shifted > 0.01


def test_features_of_two_extractors_or_non_finite_are_refused():
    a, b = torch.randn(20, 4), torch.randn(20, 3)
    with pytest.raises(ValueError, match="features2 have 3 features per sample, the other set 4"):
        kernel_distance(a, b, subsets=2, subset_size=10)
    with pytest.raises(ValueError, match=r"mu2 must be \(4,\) like mu1"):
        frechet_distance(*feature_statistics(a), *feature_statistics(b))
    bad = a.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"features contain NaN or Inf \(1 of 80"):
        feature_statistics(bad)
    mu, sigma = feature_statistics(a)
    with pytest.raises(ValueError, match="sigma2 contain NaN"):
        frechet_distance(mu, sigma, mu, sigma.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="features1 contain NaN"):
        kernel_distance(a.clone().fill_(float("nan")), a, subsets=2, subset_size=10)


def test_kid_returns_float64_values():
    """Documented as float64: the mean over subsets is not rounded through float32."""
    a = torch.randn(50, 4, dtype=torch.float64)
    b = torch.randn(50, 4, dtype=torch.float64) + 0.3
    mean, _ = kernel_distance(a, b, subsets=3, subset_size=20, generator=torch.Generator())
    generator = torch.Generator()
    values = []
    for _ in range(3):
        x = a[torch.randperm(50, generator=generator)[:20]]
        y = b[torch.randperm(50, generator=generator)[:20]]
        k_xx, k_yy, k_xy = ((u @ v.t() / 4 + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
        same = (k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()) / (20 * 19)
        values.append(float(same - 2 * k_xy.mean()))
    assert mean == pytest.approx(sum(values) / 3, rel=1e-14, abs=0)


def test_fid_inception_architecture_and_weight_loading(tmp_path):
    from patronus.eval.inception import FIDInception, load_fid_inception

    torch.manual_seed(0)
    network = FIDInception().eval()
    with torch.no_grad():
        features = network(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert features.shape == (2, 2048) and (features >= 0).all()  # pool3 of ReLU outputs
    state = network.state_dict()
    assert state["fc.weight"].shape == (1008, 2048)  # the FID weights' 1008-class head
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    torch.save(state, tmp_path / "weights.pth")
    loaded = load_fid_inception(tmp_path / "weights.pth")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(torch.zeros(1, 3, 40, 40)), network(torch.zeros(1, 3, 40, 40))
        )
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an Inception-v3 FID weight file"):
        load_fid_inception(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_fid_inception(tmp_path / "missing.pth")


def test_kid_of_sets_no_larger_than_a_subset_has_no_spread_to_report():
    """Every subset is both sets whole (the estimate does not depend on order): one value, and
    its spread is undefined rather than a reassuring 0."""
    a, b = torch.randn(30, 4), torch.randn(30, 4) + 0.2
    mean, std = kernel_distance(a, b, subsets=10, subset_size=100, generator=torch.Generator())
    assert math.isnan(std)
    once, _ = kernel_distance(a, b, subsets=1, subset_size=30)
    assert mean == pytest.approx(once, rel=1e-12)
    _, spread = kernel_distance(a, b, subsets=10, subset_size=20, generator=torch.Generator())
    assert spread > 0


def test_fid_and_kid_are_torchmetrics_own():
    """torchmetrics' own FID (eigenvalues of sigma1 sigma2) and KID (its unbiased polynomial
    MMD, gamma 1/D, degree 3) on the same float64 features; KID over all of both sets, where
    the estimate does not depend on how the subsets are drawn."""
    kid_module = pytest.importorskip("torchmetrics.image.kid", reason="a test-only dependency")
    fid_module = pytest.importorskip("torchmetrics.image.fid", reason="a test-only dependency")
    generator = torch.Generator().manual_seed(11)
    fake = torch.randn(300, 16, generator=generator, dtype=torch.float64)
    real = torch.randn(300, 16, generator=generator, dtype=torch.float64) * 1.3 + 0.2
    expected_fid = fid_module._compute_fid(*feature_statistics(fake), *feature_statistics(real))
    fid = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    assert fid == pytest.approx(float(expected_fid), rel=1e-9)
    kid, _ = kernel_distance(fake, real, subset_size=300)
    assert kid == pytest.approx(float(kid_module.poly_mmd(real, fake)), rel=1e-9)
