"""``after_step``: every sampler hands on (and yields) the sample the hook returns, and the next
step starts from it; the identity hook changes nothing."""

import pytest
import torch

from patronus.diffusion import NoiseSchedule, SamplerOptions, run_sampler
from patronus.diffusion.samplers import sample
from patronus.diffusion.scheduler_loop import scheduler_sampling

SCHEDULE = NoiseSchedule.from_name("linear", 1000)
SHORT = NoiseSchedule.from_name("linear", 30)  # DDPM walks every step


def toy_eps(x, t):
    t = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(x * 0.7) * torch.cos(t / 300.0) + 0.1 * t / 1000


CASES = [
    ("ddim", SCHEDULE, SamplerOptions("ddim", steps=7, eta=0.6)),
    ("ddpm", SHORT, SamplerOptions("ddpm")),
    ("dpmpp-2m", SCHEDULE, SamplerOptions("dpmpp-2m", steps=7)),
    ("dpmpp-3m", SCHEDULE, SamplerOptions("dpmpp-3m", steps=7)),
]


def _run(schedule, options, after_step=None):
    x_T = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    return list(sample(toy_eps, x_T, schedule, options, generator, after_step))


def _check_chain(steps, computed, change):
    """Each yielded sample is ``change`` of the step as computed; the next step starts there."""
    assert len(computed) == len(steps)
    for index, step in enumerate(steps):
        assert step.index == index
        torch.testing.assert_close(step.sample, change(computed[index]), rtol=0, atol=0)
        if index + 1 < len(steps):
            assert torch.equal(steps[index + 1].x_t, step.sample)


@pytest.mark.parametrize("name,schedule,options", CASES, ids=[c[0] for c in CASES])
def test_every_sampler_hands_on_what_after_step_returns(name, schedule, options):
    plain = _run(schedule, options)
    same = _run(schedule, options, lambda step: step.sample)
    assert all(torch.equal(a.sample, b.sample) for a, b in zip(plain, same, strict=True))

    computed = []

    def shrink(step):
        computed.append(step.sample.clone())
        return step.sample * 0.5 + 0.1

    steps = _run(schedule, options, shrink)
    _check_chain(steps, computed, lambda x: x * 0.5 + 0.1)
    torch.testing.assert_close(steps[0].sample, plain[0].sample * 0.5 + 0.1, rtol=0, atol=0)
    assert not torch.allclose(steps[-1].sample, plain[-1].sample * 0.5 + 0.1)  # it propagated


def test_after_step_must_return_a_sample_of_the_same_shape():
    options = SamplerOptions("ddim", steps=3)
    with pytest.raises(
        ValueError, match=r"after_step must return a tensor of shape \(3, 1, 5, 5\)"
    ):
        _run(SCHEDULE, options, lambda step: step.sample[:1])
    with pytest.raises(ValueError, match="got NoneType"):
        _run(SCHEDULE, options, lambda step: None)


def test_a_diffusers_scheduler_loop_hands_on_what_after_step_returns():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    )
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = run_sampler(scheduler_sampling(toy_eps, x_T, scheduler, 6))
    assert torch.equal(
        plain,
        run_sampler(scheduler_sampling(toy_eps, x_T, scheduler, 6, after_step=lambda s: s.sample)),
    )
    computed = []

    def flip(step):
        computed.append(step.sample.clone())
        return -step.sample

    steps = list(scheduler_sampling(toy_eps, x_T, scheduler, 6, after_step=flip))
    _check_chain(steps, computed, lambda x: -x)


def test_the_models_sample_passes_after_step_on():
    from patronus import Patronus
    from patronus.models.presets import get_preset

    torch.manual_seed(0)
    model = Patronus(get_preset("synthetic-tiny").model).eval()
    s = torch.randn(2, model.num_prototypes)
    x_T = torch.randn(2, *model.config.image_shape)

    def halve(step):
        return step.sample * 0.5

    for sampler in ("ddim", "dpmpp-2m"):
        with torch.no_grad():
            steps = list(model.sample_steps(s, 3, x_T=x_T, sampler=sampler, after_step=halve))
        got = model.sample(s, 3, x_T=x_T, sampler=sampler, after_step=halve)
        assert torch.equal(got, steps[-1].sample)
        assert not torch.allclose(got, model.sample(s, 3, x_T=x_T, sampler=sampler))


def _constant_noise_trajectory(schedule, steps_of):
    """A denoiser that always predicts the same noise e, and x_T on the line through x0 and e:
    every deterministic sampler's samples then stay on that line, at the level they are at,
    sqrt(abar) x0 + sqrt(1 - abar) e, which checks ``sample_t`` from outside."""
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 1, 4, 4, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    noise = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)

    def at_level(t):
        abar = schedule.abar(t)
        return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise

    steps = list(steps_of(lambda x, t: noise.expand_as(x), at_level))
    return steps, at_level


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "dpmpp-3m"])
def test_sample_t_is_the_level_of_each_decoding_sample(name):
    options = SamplerOptions(name, steps=6)
    steps, at_level = _constant_noise_trajectory(
        SCHEDULE,
        lambda eps, at_level: sample(eps, at_level(SCHEDULE.timesteps - 1), SCHEDULE, options),
    )
    assert [step.sample_t for step in steps] == [step.t for step in steps[1:]] + [-1]
    for step in steps:
        torch.testing.assert_close(step.sample, at_level(step.sample_t), rtol=0, atol=1e-10)


def test_sample_t_of_the_inversion_is_the_level_it_reached():
    from patronus.diffusion.samplers import ddim_inversion

    steps, at_level = _constant_noise_trajectory(
        SCHEDULE, lambda eps, at_level: ddim_inversion(eps, at_level(-1), SCHEDULE, 5)
    )
    assert [step.sample_t for step in steps] == [step.t for step in steps]
    assert steps[-1].sample_t == SCHEDULE.timesteps - 1
    for step in steps:
        torch.testing.assert_close(step.sample, at_level(step.sample_t), rtol=0, atol=1e-10)


def test_ddpm_sample_t_walks_every_level_down_to_the_clean_data():
    steps = _run(SHORT, SamplerOptions("ddpm"))
    assert [step.sample_t for step in steps] == list(range(SHORT.timesteps - 2, -2, -1))


def test_sample_t_of_a_diffusers_scheduler_loop():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    )
    scheduler.set_timesteps(6)
    first = int(scheduler.timesteps[0])  # "leading" spacing: 830, not 999
    steps, at_level = _constant_noise_trajectory(
        SCHEDULE, lambda eps, at_level: scheduler_sampling(eps, at_level(first), scheduler, 6)
    )
    assert [step.sample_t for step in steps] == [step.t for step in steps[1:]] + [-1]
    for step in steps:
        torch.testing.assert_close(step.sample, at_level(step.sample_t), rtol=0, atol=1e-5)
