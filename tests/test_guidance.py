"""Guidance on the prototype conditioning: a learned null vector, condition dropout in training,
null + w (conditioned - null) in the fused step when sampling, inverting and editing."""

from pathlib import Path

import pytest
import torch

from patronus import Patronus, load_model, save_model
from patronus.data import SyntheticShapes
from patronus.diffusion import (
    NoiseSchedule,
    StepOptions,
    ddim_inversion,
    ddim_sampling,
    run_sampler,
)
from patronus.interpret import edited_activations, invert_images


class Captured(Exception):
    pass


@pytest.fixture
def guided_config(tiny_config):
    config = tiny_config.replace(condition_dropout=0.3, guidance_scale=2.0)
    return config.replace(diffusion=config.diffusion.__class__(timesteps=40))


@pytest.fixture
def guided(guided_config):
    torch.manual_seed(0)
    model = Patronus(guided_config).eval()
    with torch.no_grad():
        model.null_activations.normal_()  # a null vector unlike any image's activations
    return model


def test_dropout_replaces_activations_at_the_configured_rate(guided):
    seen = {}

    def capture(module, args):
        seen["s"] = args[2]
        raise Captured

    guided.train()
    guided.unet.register_forward_pre_hook(capture)
    x0 = torch.rand(4000, 3, 24, 24) * 2 - 1
    torch.manual_seed(1)
    with pytest.raises(Captured):
        guided.training_loss(x0, torch.zeros(4000, dtype=torch.long), torch.randn_like(x0))
    dropped = (seen["s"] == guided.null_activations).all(1)
    assert abs(dropped.float().mean().item() - 0.3) < 0.03  # 4000 draws: sd 0.007
    kept = ~dropped
    torch.testing.assert_close(seen["s"][kept], guided.encode(x0[kept]))
    guided.eval()  # evaluation mode never drops
    with pytest.raises(Captured):
        guided.training_loss(x0[:50], torch.zeros(50, dtype=torch.long), torch.randn_like(x0[:50]))
    assert not (seen["s"] == guided.null_activations).all(1).any()


def test_scale_one_is_the_unguided_model_bit_for_bit(guided, guided_config):
    unguided = Patronus(guided_config.replace(condition_dropout=0.0, guidance_scale=1.0)).eval()
    missing, unexpected = unguided.load_state_dict(guided.state_dict(), strict=False)
    assert missing == [] and unexpected == ["null_activations"]
    images = torch.rand(3, 3, 24, 24) * 2 - 1
    s = guided.encode(images)
    x_T = torch.randn(3, 3, 24, 24)
    for sampler in ("ddim", "ddpm"):
        kwargs = dict(x_T=x_T, sampler=sampler, eta=0.5)
        a = guided.sample(s, 6, guidance_scale=1.0, generator=torch.Generator().manual_seed(2),
                          **kwargs)  # fmt: skip
        b = unguided.sample(s, 6, generator=torch.Generator().manual_seed(2), **kwargs)
        assert torch.equal(a, b)
    assert torch.equal(guided.invert(images, steps=5, guidance_scale=1.0),
                       unguided.invert(images, steps=5))  # fmt: skip


def test_scale_zero_is_the_null_conditioned_model(guided):
    s = torch.rand(3, guided.num_prototypes)
    null = guided.null_activations.detach().expand_as(s)
    x_T = torch.randn(3, 3, 24, 24)
    at_zero = guided.sample(s, 6, x_T=x_T, guidance_scale=0.0)
    # only the null-conditioned half counts: any activations give the same images, bit for bit
    assert torch.equal(at_zero, guided.sample(torch.rand_like(s), 6, x_T=x_T, guidance_scale=0.0))
    # and they are the null-conditioned model's (up to the batch size of the network call, which
    # changes the CPU kernels' rounding; amplified over the steps)
    torch.testing.assert_close(at_zero, guided.sample(null, 6, x_T=x_T, guidance_scale=1.0),
                               rtol=1e-3, atol=2e-3)  # fmt: skip


def test_the_model_scale_is_the_default_and_guides(guided):
    s = torch.rand(2, guided.num_prototypes)
    x_T = torch.randn(2, 3, 24, 24)
    default = guided.sample(s, 5, x_T=x_T)
    assert torch.equal(default, guided.sample(s, 5, x_T=x_T, guidance_scale=2.0))
    assert not torch.allclose(default, guided.sample(s, 5, x_T=x_T, guidance_scale=1.0))


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_guided_inversion_is_the_exact_mirror_of_guided_decoding(scale):
    """With predictions that depend on t only, DDIM is exact along the trajectory: inverting and
    decoding with the same guided combination must undo each other to rounding error."""
    x0 = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    fields = torch.randn(2, 1, 2, 5, 5, dtype=torch.float64)

    def pair(x, t):
        wave = torch.cos(t.double() / 200).reshape(-1, 1, 1, 1)
        return fields[0] * wave, fields[1] * wave

    schedule = NoiseSchedule.from_name("linear", 1000)
    x_T = run_sampler(ddim_inversion(pair, x0, schedule, 20, guidance_scale=scale))
    options = StepOptions(guidance_scale=scale)
    decoded = run_sampler(ddim_sampling(pair, x_T, schedule, 20, options=options))
    torch.testing.assert_close(decoded, x0, rtol=0, atol=1e-9)
    unguided = run_sampler(ddim_sampling(pair, x_T, schedule, 20))  # w = 1: the first only
    assert (unguided - x0).abs().max() > 1e-3


def test_unguided_models_refuse_a_scale(tiny_config):
    model = Patronus(tiny_config).eval()
    with pytest.raises(ValueError, match="condition_dropout > 0"):
        model.sample(torch.rand(1, model.num_prototypes), 2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="needs a null vector"):
        tiny_config.replace(guidance_scale=2.0)
    with pytest.raises(ValueError, match="condition_dropout must be"):
        tiny_config.replace(condition_dropout=1.0)


def test_checkpoints_keep_the_null_vector_and_the_scale(guided, tmp_path):
    save_model(guided, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config.guidance_scale == 2.0 and loaded.config.condition_dropout == 0.3
    assert torch.equal(loaded.null_activations, guided.null_activations)


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "synthetic-tiny-600"


def test_edit_guidance_amplifies_edits_and_keeps_reconstructions():
    """Guiding an edit against the image's own activations: an unchanged vector still decodes
    to the reconstruction (up to the batched call's rounding), and the edit's effect grows."""
    model = load_model(FIXTURE).eval()
    data = SyntheticShapes(8, 24, 3, seed=5)
    images = torch.stack([data[i][0] for i in range(4)])
    inversion = invert_images(model, images, steps=10)
    own = inversion.activations
    reconstruction = inversion.decode(model, own)
    torch.testing.assert_close(inversion.decode(model, own, edit_guidance=3.0), reconstruction,
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    edited = edited_activations(own, [2], own[:, 2].max(0).values.reshape(1) + 5.0)
    change = {
        w: (inversion.decode(model, edited, edit_guidance=w) - reconstruction).abs().mean()
        for w in (1.0, 3.0)
    }
    assert change[3.0] > 1.5 * change[1.0], change
    with pytest.raises(ValueError, match="not edits of the 4 images"):
        inversion.decode(model, own[:3], x_T=inversion.x_T[:3], edit_guidance=2.0)
