"""Prototype-gradient guidance of edits (patronus.interpret.prototype_guidance): the smoothing, the
nudge each step makes, and the option of visualize_prototypes."""

import math
from dataclasses import replace

import pytest
import torch

from patronus.diffusion.samplers import SamplerStep
from patronus.diffusion.timesteps import respaced_timesteps
from patronus.interpret import analyses, edit_fidelity, visualize_prototypes
from patronus.interpret.prototype_guidance import PrototypeGuidance, prototype_guidance_hook
from patronus.interpret.region import region_masks
from patronus.utils.images import smooth


def test_settings_are_checked():
    with pytest.raises(ValueError, match="strength"):
        PrototypeGuidance(strength=0.0)
    with pytest.raises(ValueError, match="strength"):
        PrototypeGuidance(strength=math.inf)
    with pytest.raises(ValueError, match="smoothing"):
        PrototypeGuidance(smoothing=-1)
    with pytest.raises(TypeError, match="smoothing"):
        PrototypeGuidance(smoothing=1.5)
    with pytest.raises(ValueError, match="late_fraction"):
        PrototypeGuidance(late_fraction=0.0)
    assert PrototypeGuidance().settings() == {
        "strength": 15.0, "smoothing": 1, "late_fraction": 0.5,
    }  # fmt: skip
    assert PrototypeGuidance().guided_span(1000) == 500  # t = 499 .. 0, then the clean data
    assert PrototypeGuidance(late_fraction=1.0).guided_span(1000) == 1000


def test_smoothing_known_answer():
    """One pass spreads a point as (1, 2, 1) x (1, 2, 1) / 16, two as (1, 4, 6, 4, 1)^2 / 256;
    constant images and zero passes stay as they are, channel by channel."""
    image = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    image[0, 0, 4, 4] = 1.0
    image[0, 1] = 0.25
    once = smooth(image, 1)
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[3:6, 3:6] = torch.outer(*(torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64),) * 2)
    torch.testing.assert_close(once[0, 0], expected / 16)
    torch.testing.assert_close(once[0, 1], image[0, 1])
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(smooth(image, 2)[0, 0, 2:7, 2:7], torch.outer(row, row) / 256)
    assert torch.equal(smooth(image, 0), image)


def _step(model, inversion, steps: int, level_index: int, generator: torch.Generator):
    """A random step of a ``steps``-step DDIM decode: (the level of its sample, the step)."""
    levels = [*respaced_timesteps(model.schedule.timesteps, steps)[::-1], -1]
    shape = (inversion.images.shape[0], *model.config.image_shape)
    pred_x0 = torch.rand(shape, generator=generator) * 2 - 1
    sample = torch.randn(shape, generator=generator)
    t, sample_t = levels[level_index], levels[level_index + 1]
    return sample_t, SamplerStep(level_index, t, sample, pred_x0, sample, sample_t)


def test_a_nudge_moves_the_clean_component_along_the_activation_gradient(tiny_inversion):
    """Each image's sample moves by sqrt(abar_next) times its share of the strength, the step's
    timesteps over the guided span, along a unit direction that raises s_J of the (smoothed)
    predicted clean image; an image already at its target does not move."""
    model, inversion, _ = tiny_inversion
    generator = torch.Generator().manual_seed(3)
    guidance = PrototypeGuidance(strength=0.2, smoothing=1, late_fraction=1.0)
    t_next, step = _step(model, inversion, 4, 1, generator)  # T = 1000: t = 666 -> 333
    assert (step.t, t_next) == (666, 333)
    prototypes = torch.tensor([2, 5, 0])
    with torch.no_grad():
        before = model.encode(smooth(step.pred_x0, 1))[torch.arange(3), prototypes]
    targets = before + torch.tensor([5.0, 5.0, -1.0])  # the third is above its target already
    nudged = prototype_guidance_hook(model, guidance, prototypes, targets)(step)
    moved = nudged - step.sample
    abar_next = model.schedule.abar(t_next)
    norms = moved.flatten(1).norm(dim=1)
    expected = math.sqrt(abar_next) * 0.2 * (666 - 333) / 1000
    torch.testing.assert_close(norms[:2], torch.full((2,), expected))
    assert norms[2] == 0
    with torch.no_grad():
        x0_after = step.pred_x0 + moved / math.sqrt(abar_next)
        after = model.encode(smooth(x0_after, 1))[torch.arange(3), prototypes]
    assert (after[:2] > before[:2]).all()


def test_only_late_steps_are_nudged_and_the_last_moves_the_image_itself(tiny_inversion):
    model, inversion, _ = tiny_inversion
    generator = torch.Generator().manual_seed(4)
    guidance = PrototypeGuidance(strength=10.0, smoothing=0, late_fraction=0.5)
    prototypes, targets = torch.tensor([1, 1, 1]), torch.full((3,), 1e6)
    hook = prototype_guidance_hook(model, guidance, prototypes, targets)
    _, early = _step(model, inversion, 4, 0, generator)  # t = 999 -> 666 > 0.5 (T - 1)
    assert hook(early) is early.sample
    _, crossing = _step(model, inversion, 4, 1, generator)  # t = 666 -> 333: 499 - 333 guided
    norms = (hook(crossing) - crossing.sample).flatten(1).norm(dim=1)
    expected = math.sqrt(model.schedule.abar(333)) * 10.0 * (499 - 333) / 500
    torch.testing.assert_close(norms, torch.full((3,), expected))
    _, last = _step(model, inversion, 2, 1, generator)  # t = 0 -> the clean data: abar_next = 1
    assert (last.t, last.sample_t) == (0, -1)
    norms = (hook(last) - last.sample).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((3,), 10.0 / 500))


def test_the_strength_is_shared_over_the_guided_timesteps_whatever_the_step_count(deaf):
    """With a target never reached, the nudges of a decode add up to the strength, for 5, 9 and 20
    steps alike (the step that crosses late_fraction (T - 1) nudged for its guided part)."""
    model, inversion, _ = deaf
    guidance = PrototypeGuidance(strength=3.0, smoothing=0, late_fraction=0.5)
    span = guidance.guided_span(model.schedule.timesteps)
    n = inversion.images.shape[0]
    for steps in (5, 9, 20):
        hook = prototype_guidance_hook(model, guidance, torch.zeros(n, dtype=torch.long),
                                       torch.full((n,), 1e6))  # fmt: skip
        lengths = []

        def measure(step, hook=hook, lengths=lengths):
            nudged = hook(step)
            moved = (nudged - step.sample) / math.sqrt(model.schedule.abar(step.sample_t))
            lengths.append(moved.flatten(1).norm(dim=1))
            return nudged

        x_T = model.invert(inversion.images, inversion.activations, steps)
        with torch.no_grad():
            list(model.sample_steps(inversion.activations, steps, x_T=x_T, sampler="ddim",
                                    after_step=measure))  # fmt: skip
        nudged = sum(bool(length.gt(0).all()) for length in lengths)
        levels = respaced_timesteps(model.schedule.timesteps, steps)
        assert nudged == sum(t < span for t in levels) + 1  # + the step crossing into the span
        torch.testing.assert_close(torch.stack(lengths).sum(0), torch.full((n,), 3.0))


def test_a_step_that_does_not_decode_is_refused(tiny_inversion):
    model, inversion, _ = tiny_inversion
    _, step = _step(model, inversion, 4, 2, torch.Generator().manual_seed(6))
    hook = prototype_guidance_hook(
        model, PrototypeGuidance(late_fraction=1.0), torch.tensor([1, 1, 1]), torch.zeros(3)
    )
    with pytest.raises(ValueError, match="nudges decoding steps"):
        hook(replace(step, sample_t=step.t))


def test_bad_input_is_refused(tiny_inversion):
    model, inversion, _ = tiny_inversion
    guidance = PrototypeGuidance(late_fraction=1.0)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        prototype_guidance_hook(model, guidance, torch.tensor([1, 2]), torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        prototype_guidance_hook(model, guidance, torch.tensor([1]), torch.tensor([math.nan]))
    _, step = _step(model, inversion, 4, 1, torch.Generator().manual_seed(5))
    wrong_batch = replace(step, sample=step.sample[:2])
    with pytest.raises(ValueError, match="2 samples, 3 targets"):
        prototype_guidance_hook(model, guidance, torch.tensor([1, 1, 1]), torch.zeros(3))(
            wrong_batch
        )


@pytest.fixture(scope="module")
def deaf():
    """A tiny model whose denoiser predicts no noise at all (its head zeroed): DDIM then inverts
    an image to sqrt(abar_T) x0 and decodes it back exactly whatever s is, so plain edits are
    the reconstructions and anything an edit changes is the guidance's. (model, inversion,
    reference activations (16, P))."""
    from patronus import Patronus
    from patronus.interpret import invert_images
    from patronus.models.presets import get_preset

    torch.manual_seed(0)
    model = Patronus(get_preset("synthetic-tiny").model).eval()
    for parameter in model.unet.head[-1].parameters():
        torch.nn.init.zeros_(parameter)
    images = torch.rand(3, *model.config.image_shape) * 1.6 - 0.8
    with torch.no_grad():
        reference = model.encode(torch.rand(16, *model.config.image_shape) * 2 - 1)
    return model, invert_images(model, images, steps=4), reference


def test_guided_edits_reach_further_and_say_so(deaf):
    """A denoiser that ignores s edits nothing by itself; guided, every edit's s_J rises, and the
    visualization and its fidelity record that the edits were guided."""
    model, inversion, reference = deaf
    bounds = reference.max(0).values + 1.0
    guidance = PrototypeGuidance(strength=0.8, smoothing=0, late_fraction=1.0)
    plain = visualize_prototypes(model, inversion, bounds, prototypes=[0, 3, 6])
    torch.testing.assert_close(plain.reconstructions, inversion.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        plain.edits, inversion.images.expand_as(plain.edits), rtol=0, atol=1e-5
    )
    guided = visualize_prototypes(
        model, inversion, bounds, prototypes=[0, 3, 6], prototype_guidance=guidance
    )
    assert guided.prototype_guidance == guidance and plain.prototype_guidance is None
    assert plain.achieved.abs().max() < 1e-3
    assert (guided.achieved > 0.05).all()
    torch.testing.assert_close(guided.reconstructions, plain.reconstructions, rtol=0, atol=0)
    assert edit_fidelity(guided).summary()["prototype_guided"] is True
    assert edit_fidelity(plain).summary()["prototype_guided"] is False


def test_extrapolation_and_consistency_take_the_guidance(deaf):
    """The deaf denoiser decodes every extrapolation and consistency edit as the reconstruction;
    guided, each decode's s_J rises towards its own value (a near one is stopped at, a far one
    is not reached)."""
    model, inversion, reference = deaf
    guidance = PrototypeGuidance(strength=0.8, smoothing=0, late_fraction=1.0)
    top = float(reference[:, 4].max())
    own = float(inversion.activations[0, 4])
    values = torch.tensor([own + 0.3, top + 3.0])
    plain = analyses.extrapolation(model, inversion, 4, values)
    torch.testing.assert_close(plain, inversion.images[:1].expand_as(plain), rtol=0, atol=1e-5)
    guided = analyses.extrapolation(model, inversion, 4, values, prototype_guidance=guidance)
    with torch.no_grad():
        reached = model.encode(guided)[:, 4]
    assert (reached > own + 0.05).all() and reached[1] > reached[0]
    unguided = analyses.consistency(model, inversion, 4, top + 1.0)
    assert (unguided.activation - inversion.activations[:, 4]).abs().max() < 1e-3
    consistent = analyses.consistency(model, inversion, 4, top + 1.0, prototype_guidance=guidance)
    assert (consistent.activation > inversion.activations[:, 4] + 0.05).all()


def test_guided_edits_in_a_region_still_keep_the_outside(deaf):
    """The nudge comes before the region's blend: outside the box every edit is the
    reconstruction, inside the guidance changed it."""
    model, inversion, reference = deaf
    guidance = PrototypeGuidance(strength=0.8, smoothing=0, late_fraction=1.0)
    vis = visualize_prototypes(
        model, inversion, reference.max(0).values, prototypes=[2], region=True,
        prototype_guidance=guidance,
    )  # fmt: skip
    with torch.no_grad():
        fired = model.patch_boxes(model.prototype_output(inversion.images).patch_index)
    outside = (region_masks(fired[:, 2], model.config.image_size) == 0).expand_as(vis.edits[0])
    assert outside.any()
    assert torch.equal(vis.edits[0][outside], vis.reconstructions[outside])
    unguided = visualize_prototypes(
        model, inversion, reference.max(0).values, prototypes=[2], region=True
    )
    assert not torch.equal(vis.edits, unguided.edits)


def test_each_edit_is_guided_towards_its_own_prototype_and_bound(tiny_inversion, monkeypatch):
    """Chunks tile the edits prototype-major (as edited_activations does): row j * n + i edits
    prototype chunk[j] into image i, so its target is that prototype's bound."""
    import patronus.interpret.what as what

    model, inversion, reference = tiny_inversion
    bounds = reference.max(0).values
    seen = []

    def recording_hook(model, guidance, prototypes, targets):
        seen.append((prototypes.clone(), targets.clone()))
        return prototype_guidance_hook(model, guidance, prototypes, targets)

    monkeypatch.setattr(what, "prototype_guidance_hook", recording_hook)
    n = inversion.images.shape[0]
    visualize_prototypes(
        model, inversion, bounds, prototypes=[1, 4, 6], batch_size=2 * n,
        prototype_guidance=PrototypeGuidance(late_fraction=1.0),
    )  # fmt: skip
    assert [len(p) for p, _ in seen] == [2 * n, n]  # chunks of two prototypes, then one
    prototypes = torch.cat([p for p, _ in seen])
    targets = torch.cat([t for _, t in seen])
    assert prototypes.tolist() == [1] * n + [4] * n + [6] * n
    assert torch.equal(targets, bounds[prototypes])
