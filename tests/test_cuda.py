"""Models on CUDA: bf16 training and sampling, CUDA-graph sampling (skipped without a GPU;
`make gpu-check` runs them on one). The ops' CUDA cases are in tests/ops/, per op."""

import pytest
import torch

from patronus import Patronus

pytestmark = pytest.mark.cuda


def test_bf16_training_and_sampling_on_cuda(tiny_config, tmp_path):
    from patronus.data import SyntheticShapes  # the trainer needs Pillow and safetensors
    from patronus.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = Patronus(tiny_config)
    config = TrainConfig(max_steps=20, batch_size=16, learning_rate=2e-3, progress=False)
    trainer = Trainer(model, SyntheticShapes(64, 24, 3), config, tmp_path, "cuda")
    assert trainer.amp_dtype == torch.bfloat16
    summary = trainer.fit()
    assert summary["final_loss"] < 1.0
    s = model.encode(torch.rand(2, 3, 24, 24, device="cuda"))
    generator = torch.Generator("cuda").manual_seed(0)
    images = model.sample(s, steps=5, generator=generator)
    assert images.is_cuda and torch.isfinite(images).all()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_cuda_graph_sampling_matches_eager(tiny_config, sampler):
    config = tiny_config.replace(diffusion=tiny_config.diffusion.__class__(timesteps=50))
    torch.manual_seed(0)
    model = Patronus(config).cuda().eval()
    images = torch.rand(4, 3, 24, 24, device="cuda") * 2 - 1
    s = model.encode(images).detach()
    x_T = model.invert(images, steps=10)
    torch.testing.assert_close(model.invert(images, steps=10, cuda_graph=True), x_T)
    results = []
    for graph in (False, True):
        generator = torch.Generator("cuda").manual_seed(3)
        results.append(model.sample(s, steps=10, sampler=sampler, eta=0.5, generator=generator,
                                    x_T=x_T, cuda_graph=graph))  # fmt: skip
    torch.testing.assert_close(results[1], results[0])


def test_a_graphed_step_refuses_an_rng_state_it_was_not_captured_with():
    from patronus.diffusion.graphed_step import GraphedStep

    def body(x, net_t, current, target, rng):
        noise = 0.0 if rng is None else rng.sum() * 0.0
        return x * 0.5 + noise, x

    x = torch.zeros(2, 1, 4, 4, device="cuda")
    levels = torch.zeros(2, dtype=torch.long, device="cuda")
    rng = torch.zeros(2, dtype=torch.long, device="cuda")
    with pytest.raises(ValueError, match="pass its rng state"):
        GraphedStep(body, x, stochastic=True)(x, levels, levels, levels, None)
    with pytest.raises(ValueError, match="must be None"):
        GraphedStep(body, x, stochastic=False)(x, levels, levels, levels, rng)


def test_fid_features_on_cuda_match_the_cpu():
    """`evaluate fid --device cuda` computes the features where the extractor's weights are."""
    from patronus.eval.generation import distances

    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 8))
    generated, reference = torch.rand(40, 3, 24, 24) * 2 - 1, torch.rand(30, 3, 24, 24)
    on_cpu = distances(extractor, generated, reference)
    on_cuda = distances(extractor.cuda(), generated, reference, device="cuda")
    assert on_cpu["fid"] > 0.1
    assert on_cuda["fid"] == pytest.approx(on_cpu["fid"], rel=1e-3)
    assert on_cuda["kid"] == pytest.approx(on_cpu["kid"], rel=1e-3)


def test_shortcut_intervention_on_cuda(tiny_config):
    """`diagnose --device cuda`: the model and the attribute classifier on the GPU, the images
    and their labels as the command reads them (on the CPU)."""
    from patronus.eval.classifier import ClassifierConfig, SmallClassifier
    from patronus.eval.intervention import intervene

    torch.manual_seed(0)
    model = Patronus(tiny_config).cuda().eval()
    classifier = SmallClassifier(ClassifierConfig(3, 24, 2, multilabel=True)).cuda().eval()
    images = torch.rand(6, 3, 24, 24) * 2 - 1
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    result = intervene(model, images, labels, [0, 1], classifier, 0, 1, steps=3, null_sets=1)
    assert len(result.null_effects) == 1 and result.other_effect >= 0


def test_feature_classifier_trains_on_cuda():
    """`evaluate fid` and `diagnose` train their classifier on --device, from CPU batches."""
    from patronus.eval.classifier import ClassifierConfig, train_classifier

    batches = [(torch.rand(8, 3, 24, 24) * 2 - 1, torch.randint(0, 2, (8,)))]
    classifier = train_classifier(ClassifierConfig(3, 24, 2), batches, 3, device="cuda")
    assert next(classifier.parameters()).is_cuda and not classifier.training


def test_activation_prior_trains_on_cuda_as_on_the_cpu():
    """`train-prior --device cuda`: the same draws (made on the CPU from the seed) as on the CPU,
    so the losses agree to rounding."""
    from patronus.models.prior import ActivationPrior, PriorConfig
    from patronus.train.prior import train_prior

    torch.manual_seed(1)
    activations = torch.randn(200, 12)
    losses = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(2)
        prior = ActivationPrior(PriorConfig(12))
        losses[device] = train_prior(prior, activations, 3, seed=5, progress=False, device=device)
        assert prior.mean.device.type == device
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-2)  # TF32 convolutions


def test_prototype_guided_edits_on_cuda(tiny_config):
    """Prototype guidance takes gradients of the prototype layer during decoding: the one edit
    path that tests/test_fake_cuda.py cannot run on its simulated device (no autograd there)."""
    from patronus.interpret import (
        PrototypeGuidance,
        activation_bounds,
        invert_images,
        visualize_prototypes,
    )

    torch.manual_seed(0)
    model = Patronus(tiny_config).cuda().eval()
    images = torch.rand(2, 3, 24, 24, device="cuda") * 2 - 1
    with torch.no_grad():
        bounds = activation_bounds(model.encode(torch.rand(16, 3, 24, 24, device="cuda") * 2 - 1))
    inversion = invert_images(model, images, 4)
    vis = visualize_prototypes(
        model, inversion, bounds, [0, 1], prototype_guidance=PrototypeGuidance()
    )
    assert vis.edits.is_cuda and torch.isfinite(vis.edits).all()
    assert vis.reached().shape == (2,)
