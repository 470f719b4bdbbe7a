"""The activation-decorrelation training term: its value, where its gradient goes, its checks."""

import pytest
import torch

from patronus import Patronus
from patronus.train import TrainConfig, Trainer
from patronus.train.activation_decorrelation import STD_FLOOR, activation_decorrelation_loss


def test_known_answer_on_columns_with_a_known_correlation():
    """Columns a and b are uncorrelated over the 4 rows, c = 3a + 5 is a itself: of the six
    off-diagonal entries, the two (a, c) ones are 1 (shrunk a little by the std floor)."""
    a = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    s = torch.stack([a, b, 3 * a + 5], dim=1)
    std_a, std_c = a.std().item(), (3 * a).std().item()
    shrink = std_a / (std_a + STD_FLOOR) * std_c / (std_c + STD_FLOOR)
    expected = 2 * shrink**2 / 6
    assert activation_decorrelation_loss(s).item() == pytest.approx(expected, rel=1e-6)


def test_matches_a_float64_reference_on_random_odd_sized_activations():
    generator = torch.Generator().manual_seed(0)
    mix = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    s = torch.randn(13, 7, generator=generator, dtype=torch.float64) @ mix - 4.0
    centred = s - s.mean(0)
    std = (centred.square().sum(0) / 12).sqrt()
    correlation = (centred / (std + STD_FLOOR)).T @ (centred / (std + STD_FLOOR)) / 12
    expected = (correlation.square().sum() - correlation.diagonal().square().sum()) / 42
    got = activation_decorrelation_loss(s.float())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # the order of the images does not matter
    shuffled = activation_decorrelation_loss(s[torch.randperm(13, generator=generator)].float())
    assert shuffled.item() == pytest.approx(got.item(), rel=1e-5)


def test_independent_activations_cost_little_and_copies_cost_much():
    generator = torch.Generator().manual_seed(1)
    independent = torch.randn(4096, 5, generator=generator)
    assert activation_decorrelation_loss(independent) < 0.01
    copies = independent[:, :1].expand(4096, 5) * torch.arange(1.0, 6.0)
    assert activation_decorrelation_loss(copies) > 0.99


def test_gradient_reaches_the_prototype_block_not_the_denoiser(tiny_config):
    torch.manual_seed(0)
    model = Patronus(tiny_config)
    x0 = torch.rand(6, *tiny_config.image_shape) * 2 - 1
    activation_decorrelation_loss(model.encode(x0)).backward()
    for part in (model.encoder, model.prototype_layer):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.unet.parameters())


@pytest.mark.parametrize("shape", [(1, 5), (6, 1), (6,)])
def test_refuses_activations_without_a_batch_correlation(shape):
    with pytest.raises(ValueError, match="activation decorrelation needs"):
        activation_decorrelation_loss(torch.randn(shape))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"activation_decorrelation_weight": -0.5}, "must be >= 0"),
        ({"activation_decorrelation_weight": 1.0, "batch_size": 1}, "batch_size >= 2"),
        ({"activation_decorrelation_weight": 1.0, "freeze_prototypes": True}, "one or the other"),
    ],
)
def test_config_refuses_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_trainer_refuses_fewer_than_two_images_per_process(tiny_config, tmp_path, monkeypatch):
    """Each process correlates its own batch: 2 images over 2 processes leave one each."""
    from patronus.data import SyntheticShapes
    from patronus.train import trainer
    from patronus.train.distributed import DistributedContext

    two_processes = DistributedContext(0, 2, torch.device("cpu"), initialized_here=False)
    monkeypatch.setattr(trainer, "setup_distributed", lambda device: two_processes)
    config = TrainConfig(batch_size=2, activation_decorrelation_weight=1.0, progress=False)
    dataset = SyntheticShapes(8, tiny_config.image_size, tiny_config.image_channels)
    with pytest.raises(ValueError, match="at least 2 images per process"):
        Trainer(Patronus(tiny_config), dataset, config, tmp_path, "cpu")
