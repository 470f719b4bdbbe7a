"""The diffusers-compatible schedulers match diffusers' own step outputs on the same inputs."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra")

from diffusers import (  # noqa: E402
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)

from patronus.diffusion.diffusers_schedulers import (  # noqa: E402
    PatronusDDIMInverseScheduler,
    PatronusDDIMScheduler,
    PatronusDDPMScheduler,
    PatronusDPMSolverMultistepScheduler,
)

DDIM_CONFIGS = [
    {},
    {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"},
    {"prediction_type": "sample", "clip_sample": False},
    {"thresholding": True, "clip_sample": False, "sample_max_value": 2.0},
]


def assert_same_loop(reference, fused, seed, step_options=lambda t: {}):
    """Both schedulers over 10 inference steps on the same random model outputs, from the
    reference's own trajectory: the fused step must give diffusers' outputs at every step.
    ``step_options(t)`` gives each call's extra arguments (called once per scheduler)."""
    for scheduler in (reference, fused):
        scheduler.set_timesteps(10)
    assert torch.equal(reference.timesteps, fused.timesteps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(3, 4, 8, 8, generator=generator)
    for t in reference.timesteps:
        output = torch.randn(sample.shape, generator=generator)
        got = fused.step(output, t, sample, **step_options(t))
        want = reference.step(output, t, sample, **step_options(t))
        assert type(got) is type(want)  # diffusers' own output class (isinstance checks hold)
        torch.testing.assert_close(
            got.pred_original_sample, want.pred_original_sample, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(got.prev_sample, want.prev_sample, atol=1e-5, rtol=1e-5)
        sample = want.prev_sample


@pytest.mark.parametrize("config", DDIM_CONFIGS)
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("use_clipped", [False, True])
def test_ddim_matches_diffusers(config, eta, use_clipped):
    reference = DDIMScheduler(**config)

    def options(t):
        generator = torch.Generator().manual_seed(int(t))
        return {"eta": eta, "use_clipped_model_output": use_clipped, "generator": generator}

    assert_same_loop(reference, PatronusDDIMScheduler.from_config(reference.config), 0, options)


INVERSE_CONFIGS = [
    {},
    {"set_alpha_to_one": False, "clip_sample": True, "clip_sample_range": 1.5},
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    # (from abar = 1 an x0 prediction leaves the noise undefined, in diffusers too)
    {"prediction_type": "sample", "steps_offset": 1, "set_alpha_to_one": False},
]


@pytest.mark.parametrize("config", INVERSE_CONFIGS)
def test_ddim_inverse_matches_diffusers(config):
    reference = DDIMInverseScheduler(**config)
    fused = PatronusDDIMInverseScheduler.from_config(reference.config)
    assert_same_loop(reference, fused, 2)
    sample = torch.randn(3, 4, 8, 8)
    prev, x0 = fused.step(sample, reference.timesteps[-1], sample, return_dict=False)
    assert prev.shape == x0.shape == sample.shape


@pytest.mark.parametrize(
    "config",
    [{}, {"variance_type": "fixed_large"}, {"prediction_type": "v_prediction"},
     {"thresholding": True, "clip_sample": False}],
)  # fmt: skip
@pytest.mark.parametrize("inference_steps", [None, 20])
def test_ddpm_matches_diffusers(config, inference_steps):
    reference = DDPMScheduler(num_train_timesteps=100, **config)
    fused = PatronusDDPMScheduler.from_config(reference.config)
    if inference_steps:
        for scheduler in (reference, fused):
            scheduler.set_timesteps(inference_steps)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 3, 6, 6, generator=generator)
    for t in reference.timesteps:
        output = torch.randn(sample.shape, generator=generator)
        got = fused.step(output, t, sample, torch.Generator().manual_seed(int(t)))
        want = reference.step(output, t, sample, torch.Generator().manual_seed(int(t)))
        assert type(got) is type(want)
        # diffusers forms beta_t = 1 - abar_t / abar_{t-1} in float32 (relative error 2e-5 at
        # t = 1, measured); the fused step takes its coefficients in float64
        torch.testing.assert_close(
            got.pred_original_sample, want.pred_original_sample, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(got.prev_sample, want.prev_sample, atol=1e-4, rtol=1e-4)
        sample = want.prev_sample


DPM_CONFIGS = [
    {},
    {"solver_order": 3},
    {"solver_order": 3, "prediction_type": "v_prediction", "beta_schedule": "scaled_linear"},
    {"solver_order": 1, "prediction_type": "sample"},
    {"thresholding": True, "sample_max_value": 1.5, "solver_order": 3},
    {"final_sigmas_type": "sigma_min", "lower_order_final": False, "solver_order": 3},
    {"timestep_spacing": "trailing", "euler_at_final": True},
    {"timestep_spacing": "leading", "steps_offset": 1, "lower_order_final": False},
]


@pytest.mark.parametrize("config", DPM_CONFIGS)
@pytest.mark.parametrize("inference_steps", [6, 20])
def test_dpm_solver_matches_diffusers(config, inference_steps):
    """Whole loops of both schedulers (each keeping its own history of x0 predictions) on the same
    random model outputs, from the reference's trajectory: equal at every step."""
    reference = DPMSolverMultistepScheduler(**config)
    fused = PatronusDPMSolverMultistepScheduler.from_config(reference.config)
    assert fused._fused()
    for scheduler in (reference, fused):
        scheduler.set_timesteps(inference_steps)
    generator = torch.Generator().manual_seed(inference_steps)
    sample = torch.randn(2, 3, 6, 6, generator=generator)
    for t in reference.timesteps:
        output = torch.randn(sample.shape, generator=generator)
        got, want = fused.step(output, t, sample), reference.step(output, t, sample)
        assert type(got) is type(want)
        got, want = got.prev_sample, want.prev_sample
        # diffusers keeps its sigmas in float32; the fused step forms its coefficients in float64
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        sample = want
    assert fused.step_index == reference.step_index == inference_steps


@pytest.mark.parametrize(
    "config",
    [{"use_karras_sigmas": True}, {"algorithm_type": "sde-dpmsolver++"},
     {"solver_type": "heun"}, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}],
)  # fmt: skip
def test_dpm_solver_settings_the_fused_step_lacks_run_diffusers_step(config):
    reference = DPMSolverMultistepScheduler(**config)
    fused = PatronusDPMSolverMultistepScheduler.from_config(reference.config)
    assert not fused._fused()
    for scheduler in (reference, fused):
        scheduler.set_timesteps(5)
    sample = torch.randn(1, 2, 4, 4)
    for t in reference.timesteps:
        output = torch.randn(sample.shape)
        got = fused.step(output, t, sample, torch.Generator().manual_seed(int(t)))
        want = reference.step(output, t, sample, torch.Generator().manual_seed(int(t)))
        assert torch.equal(got.prev_sample, want.prev_sample)
        sample = want.prev_sample


def test_ddpm_reads_any_negative_previous_timestep_as_clean_data(monkeypatch):
    """diffusers 0.30's previous_timestep gives t - T // steps for the last respaced step (-5
    here; newer versions give -1), and its step reads every negative level as abar = 1; the fused
    step refused it (prev_timestep must lie in [-1, 100))."""

    def previous_timestep_of_diffusers_0_30(self, timestep):
        return timestep - self.config.num_train_timesteps // self.num_inference_steps

    for scheduler_class in (DDPMScheduler, PatronusDDPMScheduler):
        monkeypatch.setattr(
            scheduler_class, "previous_timestep", previous_timestep_of_diffusers_0_30
        )
    reference = DDPMScheduler(num_train_timesteps=100)
    fused = PatronusDDPMScheduler.from_config(reference.config)
    for scheduler in (reference, fused):
        scheduler.set_timesteps(20)
    assert int(reference.previous_timestep(reference.timesteps[-1])) == -5
    sample, output = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    got = fused.step(output, 0, sample, torch.Generator().manual_seed(0))
    want = reference.step(output, 0, sample, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.prev_sample, want.prev_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pred_original_sample, want.pred_original_sample)


def test_learned_variance_falls_back_to_diffusers():
    reference = DDPMScheduler(num_train_timesteps=50, variance_type="learned_range")
    fused = PatronusDDPMScheduler.from_config(reference.config)
    sample = torch.randn(1, 2, 4, 4)
    output = torch.randn(1, 4, 4, 4)  # predicted variance channels
    got = fused.step(output, 10, sample, torch.Generator().manual_seed(0))
    want = reference.step(output, 10, sample, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.prev_sample, want.prev_sample)


def test_step_before_set_timesteps_is_an_error():
    with pytest.raises(ValueError, match="set_timesteps"):
        PatronusDDIMScheduler().step(torch.zeros(1, 1), 10, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="set_timesteps"):
        PatronusDPMSolverMultistepScheduler().step(torch.zeros(1, 1), 10, torch.zeros(1, 1))


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip


@pytest.mark.parametrize("pass_scheduler", [False, True])
def test_a_saved_pipeline_loads_back_with_its_patronus_scheduler(tmp_path, pass_scheduler):
    """diffusers' own loading path: save_pretrained, then DiffusionPipeline.from_pretrained."""
    from diffusers import DDPMPipeline, DiffusionPipeline

    pipe = DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20))
    pipe.scheduler = PatronusDDPMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    extra = {}
    if pass_scheduler:
        extra["scheduler"] = PatronusDDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    loaded = DiffusionPipeline.from_pretrained(tmp_path, **extra)
    assert type(loaded.scheduler) is PatronusDDPMScheduler
    images = [
        p(
            batch_size=2,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=20,
            output_type="np",
        ).images
        for p in (pipe, loaded)
    ]
    assert (images[0] == images[1]).all()


def test_ddim_pipeline_converts_its_scheduler_to_the_stock_class():
    """Documented in diffusers_schedulers: DDIMPipeline.__init__ replaces any scheduler by a stock
    DDIMScheduler, so the fused one must be set after constructing the pipeline."""
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline(unet=_tiny_unet(), scheduler=PatronusDDIMScheduler())
    assert type(pipe.scheduler) is DDIMScheduler
    pipe.scheduler = PatronusDDIMScheduler.from_config(pipe.scheduler.config)
    assert type(pipe.scheduler) is PatronusDDIMScheduler


def test_a_pipeline_with_the_fused_dpm_solver_loads_back_and_matches_the_stock_one(tmp_path):
    from diffusers import DDPMPipeline, DiffusionPipeline

    stock = DDPMPipeline(unet=_tiny_unet(), scheduler=DPMSolverMultistepScheduler(solver_order=3))
    pipe = DDPMPipeline(unet=stock.unet, scheduler=stock.scheduler)
    pipe.scheduler = PatronusDPMSolverMultistepScheduler.from_config(stock.scheduler.config)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is PatronusDPMSolverMultistepScheduler
    images = [
        p(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=8,
          output_type="np").images
        for p in (stock, pipe, loaded)
    ]  # fmt: skip
    assert (images[1] == images[2]).all()
    assert abs(images[0] - images[1]).max() < 1e-4


@pytest.mark.parametrize(
    "fused",
    [PatronusDDIMScheduler, PatronusDDPMScheduler, PatronusDDIMInverseScheduler,
     PatronusDPMSolverMultistepScheduler],
)  # fmt: skip
def test_every_fused_scheduler_reloads_as_itself(fused, tmp_path):
    """SchedulerMixin's own save/load, and as a pipeline component found through its module."""
    from diffusers import DDPMPipeline

    scheduler = fused(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    scheduler.save_pretrained(tmp_path / "alone")
    again = fused.from_pretrained(tmp_path / "alone")
    assert type(again) is fused
    saved = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    assert {k: v for k, v in again.config.items() if not k.startswith("_")} == saved
    pipe = DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler())
    pipe.scheduler = scheduler
    pipe.save_pretrained(tmp_path / "pipe")
    assert type(DDPMPipeline.from_pretrained(tmp_path / "pipe").scheduler) is fused
