"""The Patronus API: encode, sample, invert, reconstruct, edit; input checks; determinism."""

import pytest
import torch

from patronus import Patronus


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return Patronus(tiny_config)


@pytest.fixture
def images(tiny_config):
    return torch.rand(3, *tiny_config.image_shape) * 2 - 1


def test_encode_and_prototype_output(model, images):
    out = model.prototype_output(images)
    assert out.activations.shape == (3, model.num_prototypes)
    torch.testing.assert_close(model.encode(images), out.activations)
    height, width = model.encoder.output_size((24, 24))
    assert out.patch_index.max() < height * width


def test_sample_is_reproducible_and_respects_mode(model, images):
    model.train()
    s = model.encode(images).detach()
    a = model.sample(s, steps=5, generator=torch.Generator().manual_seed(0))
    b = model.sample(s, steps=5, generator=torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    assert model.training  # restored
    assert not a.requires_grad
    c = model.sample(
        s, steps=5, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.equal(a, c)


def test_ddpm_runs_all_steps(tiny_config):
    config = tiny_config.replace(diffusion=tiny_config.diffusion.__class__(timesteps=25))
    model = Patronus(config)
    s = torch.rand(2, config.num_prototypes)
    seen = []
    model.sample(
        s, sampler="ddpm", generator=torch.Generator().manual_seed(0), callback=seen.append
    )
    assert [step.t for step in seen] == list(range(24, -1, -1))


def test_invert_reconstruct_and_edit(model, images):
    x_T = model.invert(images, steps=6)
    assert x_T.shape == images.shape
    s = model.encode(images)
    decoded = model.sample(s, steps=6, x_T=x_T, sampler="ddim")  # inversion's decoder
    torch.testing.assert_close(model.reconstruct(images, steps=6), decoded)
    # an edit that changes nothing decodes to the reconstruction
    torch.testing.assert_close(model.edit(images, lambda s: s, steps=6, x_T=x_T), decoded)
    edited = model.edit(images, lambda s: s.index_fill(1, torch.tensor([2]), 9.0), steps=6, x_T=x_T)
    assert not torch.allclose(edited, decoded)
    with pytest.raises(ValueError, match="edited activations must be"):
        model.edit(images, torch.zeros(3, 2), steps=2, x_T=x_T)


def test_trajectory_generators(model, images):
    s = model.encode(images).detach()
    with torch.no_grad():
        steps = list(model.sample_steps(s, steps=4, sampler="ddim"))
        inversion = list(model.invert_steps(images, steps=4))
    assert len(steps) == len(inversion) == 4
    assert [st.t for st in steps] == [999, 666, 333, 0]
    default = list(model.sample_steps(s, steps=4))  # DPM-Solver++ 2M: no call at t = 0
    assert [st.t for st in default] == [999, 749, 500, 250]


def test_training_loss_is_a_differentiable_scalar(model, images):
    t = torch.tensor([0, 500, 999])
    loss = model.training_loss(images, t, torch.randn_like(images))
    loss.backward()
    assert loss.dim() == 0
    assert model.prototype_layer.prototypes.grad is not None
    assert model.encoder.features[0].weight.grad.abs().sum() > 0


BAD_SHAPES = [
    (torch.rand(2, 1, 24, 24), ValueError, r"must be \(B, 3, 24, 24\)"),
    (torch.rand(2, 3, 32, 32), ValueError, r"must be \(B, 3, 24, 24\)"),
    (torch.rand(3, 24, 24), ValueError, r"must be \(B, 3, 24, 24\)"),
    (torch.zeros(2, 3, 24, 24, dtype=torch.uint8), TypeError, "floating point"),
    (torch.rand(2, 3, 24, 24, dtype=torch.float64), TypeError, "weights are torch.float32"),
]
ENTRY_POINTS = {
    "invert": lambda model, x: model.invert(x, steps=2),
    "reconstruct": lambda model, x: model.reconstruct(x, steps=2),
    "edit": lambda model, x: model.edit(x, lambda s: s + 1, steps=2),
    "encode": lambda model, x: model.encode(x),
    "prototype_output": lambda model, x: model.prototype_output(x).activations,
}
ENCODING = ("encode", "prototype_output")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("bad", "error", "match"), BAD_SHAPES)
def test_bad_images_raise_clear_errors(model, entry, bad, error, match):
    with pytest.raises(error, match=match):
        ENTRY_POINTS[entry](model, bad)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_nan_images_are_refused_before_decoding(model, entry):
    nan = torch.full((2, 3, 24, 24), float("nan"))
    if entry in ENCODING:  # encoding does not read values (no host synchronisation): NaN -> NaN
        assert ENTRY_POINTS[entry](model, nan).isnan().all()
    else:
        with pytest.raises(ValueError, match="NaN"):
            ENTRY_POINTS[entry](model, nan)


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e not in ENCODING])
def test_images_outside_minus_one_one_are_refused_before_decoding(model, entry):
    """Pixels in [0, 255] decoded into garbage without a word; noise (x_T) is not clean images
    and keeps any value."""
    pixels = torch.rand(2, 3, 24, 24) * 255
    with pytest.raises(ValueError, match=r"x0 must be in \[-1, 1\], got values up to 2\d\d"):
        ENTRY_POINTS[entry](model, pixels)
    ENTRY_POINTS[entry](model, pixels / 127.5 - 1)
    model.sample(torch.rand(2, 8), steps=2, x_T=3 * torch.randn(2, 3, 24, 24))


def test_bad_activations_raise_clear_errors(model):
    with pytest.raises(ValueError, match=r"must be \(B, 8\)"):
        model.sample(torch.rand(2, 5), steps=2)
    with pytest.raises(ValueError, match="NaN"):
        model.sample(torch.full((2, 8), float("nan")), steps=2)
    with pytest.raises(TypeError, match=r"torch.Tensor \(B, 8\), got int \(encode\(x0\)"):
        model.sample(2, steps=2)  # a count where the activations go
    with pytest.raises(TypeError, match=r"floating point, got torch\.int64"):
        model.sample(torch.ones(2, 8, dtype=torch.long), steps=2)
    with pytest.raises(ValueError, match="sampler must be"):
        model.sample(torch.rand(2, 8), sampler="euler")
    with pytest.raises(TypeError, match=r"x_T are torch.float64 .* \.to\(torch.float32\)"):
        model.sample(torch.rand(2, 8), steps=2, x_T=torch.randn(2, 3, 24, 24).double())
    with pytest.raises(TypeError, match="s_edit must be a \\(B, P\\) tensor or return one"):
        model.edit(torch.rand(2, 3, 24, 24), lambda s: s.tolist(), steps=2)
    with pytest.raises(ValueError, match="x_T has 1 samples"):
        model.sample(torch.rand(2, 8), steps=2, x_T=torch.randn(1, 3, 24, 24))


def test_image_size_must_fit_the_unet(tiny_config):
    with pytest.raises(ValueError, match="divisible"):
        Patronus(tiny_config.replace(image_size=25))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_and_inversion_are_the_same_without_the_extension(
    tiny_config, images, monkeypatch, sampler
):
    """Sampling and inversion with the extension's fused step and with its PyTorch reference give
    bit-identical images (everything else unchanged)."""
    from patronus import _backend
    from patronus.ops import scheduler as step_module

    if _backend.load_extension()[0] is None:
        pytest.skip("patronus._C is not built (PATRONUS_BUILD_EXT=0)")
    config = tiny_config.replace(diffusion=tiny_config.diffusion.__class__(timesteps=40))
    torch.manual_seed(0)
    model = Patronus(config)
    results = {}
    probes = dict(step_module.BACKENDS.probes)
    for name in ("cpp", "torch"):  # the scheduler step's only backend
        backends = _backend.OpBackends("scheduler_step", {name: probes[name]})
        monkeypatch.setattr(step_module, "BACKENDS", backends)
        x_T = model.invert(images, steps=10)
        s = model.encode(images)
        generator = torch.Generator().manual_seed(5)
        decoded = model.sample(s, steps=10, sampler=sampler, eta=0.5, generator=generator,
                               x_T=x_T, clip_x0=True)  # fmt: skip
        results[name] = (x_T, decoded)
    for a, b in zip(results["cpp"], results["torch"], strict=True):
        assert torch.equal(a, b)


def test_cuda_graph_needs_cuda(model, images):
    with pytest.raises(ValueError, match="CUDA-graph capture needs CUDA tensors"):
        model.sample(model.encode(images).detach(), steps=2, sampler="ddim", cuda_graph=True)


def test_compiled_denoiser_samples_the_same(model, images):
    torch._dynamo.reset()
    s = model.encode(images).detach()
    x_T = torch.randn(images.shape)
    t = torch.tensor([999, 500, 0])
    with torch.no_grad():
        eager_eps = model.eval()(x_T, t, s)
    eager = model.sample(s, steps=3, x_T=x_T)
    keys = set(model.state_dict())
    model.compile_denoiser(backend="aot_eager", fullgraph=True)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x_T, t, s), eager_eps, rtol=1e-5, atol=1e-5)
    # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) amplifies eps's rounding 160x at t = 999;
    # the samplers pass t laid out as above: the graph compiled for it serves them (no recompile)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = model.sample(s, steps=3, x_T=x_T)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


def test_bf16_precision_autocasts_the_denoiser_only(model, images):
    """bf16: the same predictions to bf16's precision (an untrained net's outputs are O(1)),
    in the input's dtype; encoding untouched; fp32 back exactly as before."""
    s = model.encode(images)
    x_t = torch.randn_like(images)
    t = torch.full((images.shape[0],), 500)
    with torch.no_grad():
        exact = model.eps_fn(s)(x_t, t)
        fast = model.set_precision("bf16").eps_fn(s)(x_t, t)
        assert torch.equal(model.encode(images), s)
        again = model.set_precision("fp32").eps_fn(s)(x_t, t)
    assert fast.dtype == torch.float32 and torch.equal(again, exact)
    error = (fast - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()
    assert 0 < error < 0.05
    with pytest.raises(ValueError, match="precision must be"):
        model.set_precision("fp16")
