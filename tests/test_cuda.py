"""CUDA paths (skipped without a GPU; `make gpu-check` runs them on one)."""

import pytest
import torch

from patronus import Patronus
from patronus.ops import prototype_min_distance, q_sample, q_sample_ref
from patronus.testing import brute_force_distances

pytestmark = pytest.mark.cuda


def test_prototype_ops_on_cuda_match_float64():
    features = torch.randn(4, 33, 7, 9, device="cuda")
    prototypes = torch.rand(13, 33, device="cuda")
    min_dist, _ = prototype_min_distance(features, prototypes)
    expected = brute_force_distances(features, prototypes).min(2).values
    torch.testing.assert_close(min_dist.double(), expected, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q_sample_on_cuda(dtype):
    x0 = torch.randn(3, 2, 8, 8, device="cuda", dtype=dtype)
    scale = torch.rand(3, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(
        q_sample(x0, x0, scale, scale),
        q_sample_ref(x0.cpu(), x0.cpu(), scale.cpu(), scale.cpu()).cuda(),
    )


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


def test_scheduler_step_cuda_matches_cpu():
    from patronus.diffusion import NoiseSchedule
    from patronus.ops.scheduler import scheduler_step

    table = NoiseSchedule.from_name("linear", 1000).alphas_cumprod
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(8, 3, 17, 9).to(dtype)  # odd sizes: the unvectorised path
        out = torch.randn_like(x)
        c = torch.randint(1, 1000, (8,))
        rng = torch.tensor([99, 4])
        for shape_x in (x, x[:, :, :16, :8].contiguous()):  # and the vectorised one
            o = out[:, :, : shape_x.shape[2], : shape_x.shape[3]].contiguous()
            kw = dict(mode="ddpm", clip=1.0)
            cpu = scheduler_step(shape_x, o, c, c - 1, table, rng_state=rng, **kw)
            gpu = scheduler_step(shape_x.cuda(), o.cuda(), c.cuda(), c.cuda() - 1, table,
                                 rng_state=rng.cuda(), **kw)  # fmt: skip
            for a, b in zip(cpu, gpu, strict=True):
                torch.testing.assert_close(
                    b.cpu().float(),
                    a.float(),
                    atol=1e-5 if dtype == torch.float32 else 1e-2,
                    rtol=1e-3,
                )
