"""Samplers against independent float64 implementations of their update equations, and DDIM
inversion against an analytic noise predictor."""

import math

import numpy as np
import pytest
import torch

from patronus.diffusion import (
    NoiseSchedule,
    SamplerOptions,
    ddim_inversion,
    ddim_sampling,
    ddpm_sampling,
    dpm_solver_sampling,
    respaced_timesteps,
    run_sampler,
)
from patronus.diffusion.samplers import sample
from patronus.ops.scheduler import philox_normal

SCHEDULE = NoiseSchedule.from_name("linear", 1000)
ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
BETAS = np.linspace(1e-4, 0.02, 1000)


def toy_eps(x, t):
    """A smooth, t-dependent 'network' (float64 inside, same for both implementations)."""
    t = t.double().reshape(-1, *([1] * (x.dim() - 1)))
    return (torch.tanh(x.double() * 0.7) * torch.cos(t / 300.0) + 0.1 * t / 1000).to(x.dtype)


def toy_eps_np(x, t):
    return np.tanh(x * 0.7) * np.cos(t / 300.0) + 0.1 * t / 1000


def step_noise(seed_generator, shape):
    """The samplers' noise: a seed drawn from the generator, Philox with the step as offset."""
    seed = int(torch.randint(0, 2**62, (1,), generator=seed_generator))
    return lambda step: philox_normal(seed, step, shape, "cpu").numpy()


def ddim_reference(x, timesteps, eta, noise, clip):
    """DDIM, Song et al. eq. 12, in float64 numpy; ``noise(step)`` gives the step's noise."""
    for step, i in enumerate(range(len(timesteps) - 1, -1, -1)):
        t = timesteps[i]
        a_t = ABAR[t]
        a_prev = ABAR[timesteps[i - 1]] if i > 0 else 1.0
        eps = toy_eps_np(x, t)
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        if clip:
            x0 = np.clip(x0, -1, 1)
            eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * noise(step)
    return x


def test_ddim_deterministic_matches_float64_equations():
    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    result = run_sampler(ddim_sampling(toy_eps, x_T, SCHEDULE, steps=20))
    expected = ddim_reference(x_T.numpy(), respaced_timesteps(1000, 20), 0.0, None, False)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_eta_and_clipping_matches_float64_equations(clip):
    x_T = torch.randn(2, 1, 3, 5, dtype=torch.float64)
    generator = torch.Generator().manual_seed(7)
    result = run_sampler(ddim_sampling(toy_eps, x_T, SCHEDULE, 10, 0.6, clip, generator))
    noise = step_noise(torch.Generator().manual_seed(7), x_T.shape)
    expected = ddim_reference(x_T.numpy(), respaced_timesteps(1000, 10), 0.6, noise, clip)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_matches_float64_equations(variance):
    schedule = NoiseSchedule.from_name("linear", 1000)
    x_T = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    result = run_sampler(ddpm_sampling(toy_eps, x_T, schedule, False, generator, variance))
    noise = step_noise(torch.Generator().manual_seed(3), x_T.shape)
    x = x_T.numpy()
    for step, t in enumerate(range(999, -1, -1)):
        eps = toy_eps_np(x, t)
        a_prev = ABAR[t - 1] if t > 0 else 1.0
        # Ho et al. eq. 11: mean = (x - beta / sqrt(1 - abar) eps) / sqrt(alpha)
        mean = (x - BETAS[t] / np.sqrt(1 - ABAR[t]) * eps) / np.sqrt(1 - BETAS[t])
        if t > 0:
            var = BETAS[t] * (1 - a_prev) / (1 - ABAR[t]) if variance == "posterior" else BETAS[t]
            mean = mean + np.sqrt(var) * noise(step)
        x = mean
    np.testing.assert_allclose(result.numpy(), x, rtol=1e-8, atol=1e-8)


def gaussian_eps(mu, sigma0):
    """The exact noise predictor of data x0 ~ N(mu, sigma0^2 I): E[eps | x_t]."""

    def eps(x, t):
        abar = SCHEDULE.alphas_cumprod[t].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        variance = abar * sigma0**2 + 1 - abar
        return (1 - abar).sqrt() * (x - abar.sqrt() * mu) / variance

    return eps


@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_inversion_is_the_exact_mirror_of_decoding(steps):
    """With a noise prediction that depends on t only, DDIM is exact along the trajectory, so
    decoding must undo inversion to rounding error: any mislabelled step or coefficient shows."""
    x0 = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    field = torch.randn(1, 2, 5, 5, dtype=torch.float64)

    def eps(x, t):
        return field * torch.cos(t.double() / 200).reshape(-1, 1, 1, 1)

    x_T = run_sampler(ddim_inversion(eps, x0, SCHEDULE, steps))
    decoded = run_sampler(ddim_sampling(eps, x_T, SCHEDULE, steps))
    torch.testing.assert_close(decoded, x0, rtol=0, atol=1e-9)


def test_inversion_and_decoding_converge_for_gaussian_data():
    """Gaussian data with its exact noise predictor: the round trip converges at first order
    (DDIM is Euler on the probability-flow ODE) and x_T approaches the ODE's exact x_T."""
    torch.manual_seed(0)
    mu, sigma0 = 0.3, 0.5
    x0 = mu + sigma0 * torch.randn(4, 1, 6, 6, dtype=torch.float64)
    eps = gaussian_eps(mu, sigma0)
    errors = {}
    for steps in (100, 200, 1000):
        x_T = run_sampler(ddim_inversion(eps, x0, SCHEDULE, steps))
        decoded = run_sampler(ddim_sampling(eps, x_T, SCHEDULE, steps))
        errors[steps] = (decoded - x0).abs().max().item()
    assert 1.8 < errors[100] / errors[200] < 2.2
    assert errors[1000] < 6e-3
    abar = SCHEDULE.abar(999)
    exact_x_T = math.sqrt(abar) * mu + math.sqrt(abar * sigma0**2 + 1 - abar) * (x0 - mu) / sigma0
    assert (x_T - exact_x_T).abs().max().item() < 4e-3


def test_inversion_trajectory_is_labelled_with_its_timesteps():
    x0 = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    trajectory = list(ddim_inversion(gaussian_eps(0.0, 1.0), x0, SCHEDULE, 5))
    assert [step.t for step in trajectory] == respaced_timesteps(1000, 5)
    assert trajectory[-1].t == 999  # the last sample is x_T at t = T - 1
    assert torch.equal(trajectory[0].x_t, x0)


def test_sampler_yields_steps_and_calls_back():
    x_T = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    seen = []
    result = run_sampler(ddim_sampling(toy_eps, x_T, SCHEDULE, 8), callback=seen.append)
    assert [s.t for s in seen] == respaced_timesteps(1000, 8)[::-1]
    assert [s.index for s in seen] == list(range(8))
    assert torch.equal(seen[-1].sample, result)
    assert torch.equal(seen[0].x_t, x_T)
    # the final step reaches abar = 1: its output is its predicted x0
    assert torch.equal(seen[-1].pred_x0, result)
    for step in seen:
        assert step.pred_x0.shape == x_T.shape


def test_generator_makes_stochastic_samplers_reproducible():
    x_T = torch.randn(1, 1, 4, 4)

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return run_sampler(ddim_sampling(toy_eps, x_T, SCHEDULE, 10, 1.0, False, generator))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_invalid_arguments():
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="eta must be"):
        next(ddim_sampling(toy_eps, x, SCHEDULE, 10, eta=-1))
    with pytest.raises(ValueError, match="variance must be"):
        run_sampler(ddpm_sampling(toy_eps, x, NoiseSchedule.from_name("cosine", 3), variance="x"))
    with pytest.raises(ValueError, match="no steps"):
        run_sampler(iter([]))


def test_sampler_options_build_and_refuse():
    assert SamplerOptions.of() == SamplerOptions()
    assert SamplerOptions.of(20, clip_x0=True) == SamplerOptions(steps=20, clip_x0=True)
    base = SamplerOptions(sampler="ddpm", variance="beta")
    assert SamplerOptions.of(base, eta=0.5) == SamplerOptions("ddpm", eta=0.5, variance="beta")
    assert base.network_calls(SCHEDULE) == 1000
    assert SamplerOptions(steps=7).network_calls(SCHEDULE) == 7
    with pytest.raises(TypeError, match=r"unknown sampling option\(s\) \['clip'\]"):
        SamplerOptions.of(clip=True)
    with pytest.raises(TypeError, match="SamplerOptions or a number of steps"):
        SamplerOptions.of("ddim")
    for bad, match in [({"sampler": "euler"}, "sampler must be"), ({"steps": 0}, "steps must be"),
                       ({"steps": 2.5}, "steps must be"), ({"eta": -1.0}, "eta must be"),
                       ({"variance": "x"}, "variance must be"),
                       ({"dynamic_threshold": 1.5}, "dynamic_threshold")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            SamplerOptions(**bad)


def test_sample_dispatches_like_the_sampler_it_names():
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    options = SamplerOptions("ddim", steps=6, eta=0.7, clip_x0=True)
    got = run_sampler(sample(toy_eps, x_T, SCHEDULE, options, torch.Generator().manual_seed(1)))
    expected = run_sampler(ddim_sampling(toy_eps, x_T, SCHEDULE, 6, 0.7, True,
                                         torch.Generator().manual_seed(1)))  # fmt: skip
    assert torch.equal(got, expected)
    schedule = NoiseSchedule.from_name("linear", 30)
    options = SamplerOptions(sampler="ddpm", variance="beta")
    got = run_sampler(sample(toy_eps, x_T, schedule, options, torch.Generator().manual_seed(2)))
    expected = run_sampler(ddpm_sampling(toy_eps, x_T, schedule, False,
                                         torch.Generator().manual_seed(2), "beta"))  # fmt: skip
    assert torch.equal(got, expected)
    # the default: DPM-Solver++ 2M with 20 network calls
    got = run_sampler(sample(toy_eps, x_T, SCHEDULE, SamplerOptions()))
    expected = run_sampler(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, 20, 2))
    assert torch.equal(got, expected)


def test_eta_needs_ddim():
    with pytest.raises(ValueError, match='eta > 0 needs sampler="ddim"'):
        SamplerOptions(eta=0.5)
    assert SamplerOptions("ddim", eta=0.5).eta == 0.5


def test_clipping_bounds_every_predicted_x0():
    x_T = 3 * torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for step in ddim_sampling(lambda x, t: -x, x_T, SCHEDULE, 10, clip_x0=True):
        assert step.pred_x0.abs().max() <= 1.0
    assert math.isfinite(step.sample.sum().item())
