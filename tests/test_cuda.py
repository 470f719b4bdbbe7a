"""CUDA paths (skipped without a GPU; `make gpu-check` runs them on one)."""

import pytest
import torch

from patronus import Patronus
from patronus.ops import prototype_min_distance, q_sample, q_sample_ref
from patronus.testing import brute_force_distances
from patronus.train import TrainConfig, Trainer

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
    from patronus.data import SyntheticShapes

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
