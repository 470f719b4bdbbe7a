"""The DPM-Solver++ samplers: whole loops against the solver written out in float64 numpy and
against diffusers' own DPMSolverMultistepScheduler loop (levels, lower-order steps, results)."""

import numpy as np
import pytest
import torch

from patronus.diffusion import NoiseSchedule, SamplerOptions, run_sampler
from patronus.diffusion.samplers import (
    dpm_solver_sampling,
    sample,
    solver_orders,
    solver_timesteps,
)

SCHEDULE = NoiseSchedule.from_name("linear", 1000)
ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


def toy_eps(x, t):
    """A smooth, t-dependent 'network' (float64 inside, same for every implementation)."""
    t = t.double().reshape(-1, *([1] * (x.dim() - 1)))
    return (torch.tanh(x.double() * 0.7) * torch.cos(t / 300.0) + 0.1 * t / 1000).to(x.dtype)


def toy_eps_np(x, t):
    return np.tanh(x * 0.7) * np.cos(t / 300.0) + 0.1 * t / 1000


def dpm_solver_pp_reference(x, steps, order):
    """DPM-Solver++ multistep in float64 numpy, written from the paper's lambda / D form:
    levels round(i (T - 1) / steps), warm-up orders, lower-order final steps as diffusers."""
    levels = [round(i * 999 / steps) for i in range(steps, 0, -1)]
    lam = lambda a: 0.5 * np.log(a / (1 - a))  # noqa: E731
    m, previous = [], []
    for index, t in enumerate(levels):
        a_s = ABAR[t]
        x0 = (x - np.sqrt(1 - a_s) * toy_eps_np(x, t)) / np.sqrt(a_s)
        m.insert(0, x0)
        previous.insert(0, t)
        if index == steps - 1:  # to clean data
            x = x0
            break
        a_t = ABAR[levels[index + 1]]
        alpha_t, sigma_t = np.sqrt(a_t), np.sqrt(1 - a_t)
        h = lam(a_t) - lam(a_s)
        k = min(order, index + 1)
        if steps < 15 and index == steps - 2:
            k = min(k, 2)
        x_next = sigma_t / np.sqrt(1 - a_s) * x - alpha_t * np.expm1(-h) * m[0]
        if k >= 2:
            r0 = (lam(a_s) - lam(ABAR[previous[1]])) / h
            d1_0 = (m[0] - m[1]) / r0
            if k == 2:
                x_next = x_next - 0.5 * alpha_t * np.expm1(-h) * d1_0
            else:
                r1 = (lam(ABAR[previous[1]]) - lam(ABAR[previous[2]])) / h
                d1_1 = (m[1] - m[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = (
                    x_next
                    + alpha_t * (np.expm1(-h) / h + 1) * d1
                    - alpha_t * ((np.expm1(-h) + h) / h**2 - 0.5) * d2
                )
        x = x_next
    return x


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20])
def test_sampler_matches_the_float64_solver(order, steps):
    x_T = torch.randn(2, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = run_sampler(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, steps, order))
    expected = dpm_solver_pp_reference(x_T.numpy(), steps, order)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [5, 10, 16])
def test_sampler_matches_diffusers_own_loop(order, steps):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, its defaults: linspace spacing,
    lower_order_final, final sigma zero) over the same network: same levels, same images."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", solver_order=order, algorithm_type="dpmsolver++"
    )
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == solver_timesteps(1000, steps)
    x_T = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(toy_eps(x, t.expand(x.shape[0])), t, x).prev_sample
    got = run_sampler(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, steps, order))
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)


def test_lower_order_steps_follow_diffusers_rules():
    assert solver_orders(1, 2) == [1]
    assert solver_orders(5, 3) == [1, 2, 3, 2, 1]
    assert solver_orders(20, 3) == [1, 2] + [3] * 17 + [1]
    assert solver_orders(10, 2) == [1] + [2] * 8 + [1]
    assert solver_timesteps(1000, 4) == [999, 749, 500, 250]
    with pytest.raises(ValueError, match="steps must be"):
        solver_timesteps(1000, 0)


def test_trajectory_reports_each_call():
    x_T = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    seen = []
    result = run_sampler(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, 6, 3), callback=seen.append)
    assert [s.t for s in seen] == solver_timesteps(1000, 6)
    assert torch.equal(seen[-1].sample, result) and torch.equal(seen[-1].pred_x0, result)
    assert torch.equal(seen[0].x_t, x_T)


def test_sample_dispatches_and_options_refuse_what_the_solver_lacks():
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for name, order in (("dpmpp-2m", 2), ("dpmpp-3m", 3)):
        options = SamplerOptions(sampler=name, steps=7)
        assert options.network_calls(SCHEDULE) == 7
        got = run_sampler(sample(toy_eps, x_T, SCHEDULE, options))
        assert torch.equal(got, run_sampler(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, 7, order)))
    with pytest.raises(ValueError, match="deterministic"):
        SamplerOptions(sampler="dpmpp-2m", eta=0.5)
    with pytest.raises(ValueError, match="cuda_graph"):
        SamplerOptions(sampler="dpmpp-3m", cuda_graph=True)
    with pytest.raises(ValueError, match="order must be"):
        next(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, 5, 4))


def test_guidance_scale_one_is_the_unguided_solver():
    """With (conditioned, null) outputs, w = 1 gives the conditioned solver bit for bit."""
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))

    def guided(x, t):
        return toy_eps(x, t), toy_eps(x * 0.5, t)

    options = SamplerOptions(sampler="dpmpp-2m", steps=8, guidance_scale=1.0).step_options
    got = run_sampler(dpm_solver_sampling(guided, x_T, SCHEDULE, 8, 2, options))
    assert torch.equal(got, run_sampler(dpm_solver_sampling(toy_eps, x_T, SCHEDULE, 8, 2)))
