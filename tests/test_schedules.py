"""Noise schedules against float64 formulas written out independently."""

import math

import numpy as np
import pytest

from patronus.diffusion import NoiseSchedule, cosine_betas, linear_betas, respaced_timesteps


def test_linear_schedule_matches_the_paper():
    betas = linear_betas(1000).numpy()
    np.testing.assert_allclose(betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-15)
    abar = NoiseSchedule(linear_betas(1000)).alphas_cumprod.numpy()
    np.testing.assert_allclose(abar, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-14)
    assert abar[0] == pytest.approx(0.9999, abs=1e-12)
    assert abar[999] == pytest.approx(4.0e-5, rel=0.02)


def test_linear_schedule_scales_with_step_count():
    np.testing.assert_allclose(linear_betas(250).numpy(), np.linspace(4e-4, 0.08, 250), rtol=1e-15)


def test_cosine_schedule_matches_its_definition():
    steps = 1000
    f = [math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(steps + 1)]
    expected = [min(1 - f[t + 1] / f[t], 0.999) for t in range(steps)]
    np.testing.assert_allclose(cosine_betas(steps).numpy(), expected, rtol=1e-12, atol=1e-15)
    abar = NoiseSchedule.from_name("cosine", steps).alphas_cumprod.numpy()
    np.testing.assert_allclose(abar[:-1], [f[t + 1] / f[0] for t in range(steps - 1)], rtol=1e-9)


def test_linear_schedule_needs_enough_steps():
    with pytest.raises(ValueError, match="at least 21 steps"):
        linear_betas(12)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="schedule must be one of"):
        NoiseSchedule.from_name("sigmoid", 10)


@pytest.mark.parametrize(("total", "steps"), [(1000, 50), (1000, 1000), (1000, 7), (10, 9)])
def test_respaced_timesteps(total, steps):
    timesteps = respaced_timesteps(total, steps)
    assert len(timesteps) == steps == len(set(timesteps))
    assert timesteps[0] == 0 and timesteps[-1] == total - 1
    assert timesteps == sorted(timesteps)


def test_respacing_bounds():
    assert respaced_timesteps(100, 1) == [99]
    for bad in (0, 101):
        with pytest.raises(ValueError, match="steps must be in"):
            respaced_timesteps(100, bad)


@pytest.mark.parametrize(
    ("ours", "theirs"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]
)
def test_schedules_are_diffusers_own(ours, theirs):
    """The betas diffusers' DDPMScheduler computes (in float32) for the same names."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra")
    reference = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02
    ).betas.double()
    betas = NoiseSchedule.from_name(ours, 1000).betas
    np.testing.assert_allclose(betas.numpy(), reference.numpy(), rtol=1e-6)
