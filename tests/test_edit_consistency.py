"""The edit-consistency training term: what it measures, which rows and weights it touches."""

import pytest
import torch

from patronus import Patronus
from patronus.train import TrainConfig
from patronus.train.edit_consistency import (
    edit_consistency_loss,
    frozen_prototype_output,
)


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return Patronus(tiny_config)


@pytest.fixture
def batch(tiny_config):
    torch.manual_seed(1)
    x0 = torch.rand(6, *tiny_config.image_shape) * 2 - 1
    t = torch.tensor([3, 10, 40, 90, 150, 199])
    return x0, t, torch.randn_like(x0)


def test_frozen_prototype_output_matches_encode_and_spare_the_weights(model, batch):
    images = batch[0].clone().requires_grad_()
    activations = frozen_prototype_output(model, images).activations
    torch.testing.assert_close(activations, model.encode(images))
    activations[:, 1].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    weights = [*model.encoder.parameters(), *model.prototype_layer.parameters()]
    assert all(p.grad is None for p in weights)


class _Oracle(torch.nn.Module):
    """A denoiser that knows the clean images: it returns the exact noise of every row whatever
    s says (finds each row's image by its x_t), so x0_hat = x0 for the edit and the original."""

    def __init__(self, x0: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.x_t, self.abar = x0, x_t, abar

    def forward(self, x_t, t, s):
        row = torch.cdist(x_t.flatten(1), self.x_t.flatten(1)).argmin(1)
        abar = self.abar[t].float().reshape(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * self.x0[row]) / (1 - abar).sqrt()


def test_known_answer_with_a_denoiser_that_ignores_s(model, batch):
    """An oracle ignores the edit: the edited prediction encodes to the image's own s_J (missing
    the target by target - s_J) and the unedited one keeps it (no drift), so the term is
    mean(((target - s_J) / std_J)^2)."""
    x0, t, noise = batch
    forward = model.training_forward(x0, t, noise)
    model.unet = _Oracle(x0, forward.x_t, model.alphas_cumprod(x0.device))
    forward = model.training_forward(x0, t, noise)
    loss = edit_consistency_loss(model, t, forward, 10_000, torch.Generator().manual_seed(5))
    prototype = torch.randint(
        0, model.num_prototypes, (6,), generator=torch.Generator().manual_seed(5)
    )
    s = forward.activations.detach()
    missed = s.max(0).values[prototype] - s[torch.arange(6), prototype]
    expected = (missed / s.std(0)[prototype]).square().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-4)


def test_only_rows_at_low_noise_and_kept_take_part(model, batch):
    x0, t, noise = batch
    forward = model.training_forward(x0, t, noise)
    none = edit_consistency_loss(model, t, forward, max_timestep=2)
    assert none.item() == 0.0 and none.requires_grad  # no row with t <= 2
    # one row left: the term is that row's alone, whatever the others hold
    kept = torch.zeros(6, dtype=torch.bool)
    kept[4] = True
    only = edit_consistency_loss(
        model, t, forward._replace(kept=kept), 10_000, torch.Generator().manual_seed(0)
    )
    low = edit_consistency_loss(
        model, t, forward._replace(kept=t >= 150), 150, torch.Generator().manual_seed(0)
    )
    assert only.item() > 0
    torch.testing.assert_close(only, low)


def test_the_gradient_reaches_the_denoiser_only(model, batch):
    x0, t, noise = batch
    forward = model.training_forward(x0, t, noise)
    edit_consistency_loss(model, t, forward._replace(eps=forward.eps.detach()), 10_000).backward()
    assert model.unet.prototype_embedding.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.prototype_layer.prototypes.grad is None


def test_the_gradient_is_the_terms_own(model, batch):
    """Finite differences along a random direction of the denoiser's weights agree with the
    gradient: both predictions move with the weights, and both carry the gradient (a stopped
    gradient on the unedited one made this fail: the term then never fell in training)."""
    model = model.double().eval()
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in batch)

    def term() -> torch.Tensor:
        forward = model.training_forward(x0, t, noise)
        return edit_consistency_loss(model, t, forward, 10_000, torch.Generator().manual_seed(3))

    weights = list(model.unet.parameters())
    gradient = torch.autograd.grad(term(), weights, allow_unused=True)
    torch.manual_seed(4)
    direction = [torch.randn_like(w) for w in weights]
    slope = sum((g * d).sum() for g, d in zip(gradient, direction, strict=True) if g is not None)
    step = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for w, d in zip(weights, direction, strict=True):
                w += sign * step * d
            values.append(term())
            for w, d in zip(weights, direction, strict=True):
                w -= sign * step * d
    torch.testing.assert_close((values[0] - values[1]) / (2 * step), slope, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "changes", [{"edit_consistency_weight": -1.0}, {"edit_consistency_max_timestep": -1}]
)
def test_config_refuses_bad_values(changes):
    with pytest.raises(ValueError, match="edit_consistency"):
        TrainConfig(**changes)


class _ShiftedEdits(_Oracle):
    """The oracle for rows conditioned on their own activations; for edited rows the noise
    that makes x0_hat = x0 + shift everywhere (an edit that changes every pixel alike)."""

    def __init__(self, x0, x_t, abar, own, shift: float) -> None:
        super().__init__(x0, x_t, abar)
        self.own, self.shift = own, shift

    def forward(self, x_t, t, s):
        eps = super().forward(x_t, t, s)
        edited = ~(s[:, None, :] == self.own[None]).all(-1).any(1)
        abar = self.abar[t].float().reshape(-1, 1, 1, 1)
        shift = self.shift * (abar / (1 - abar)).sqrt()
        return torch.where(edited.reshape(-1, 1, 1, 1), eps - shift, eps)


def test_known_answer_for_an_edit_that_changes_every_pixel_alike(model, batch):
    """Edited predictions x0 + 0.3 everywhere: the locality part is (0.3 / (0.3 + 0.05))^2 for
    every edited row (as much change outside the box as inside), the miss is that of the shifted
    images encoded the public way, the unedited prediction keeps s (no drift)."""
    x0, t, noise = batch
    forward = model.training_forward(x0, t, noise)
    s = forward.activations.detach()
    abar = model.alphas_cumprod(x0.device)
    model.unet = _ShiftedEdits(x0, forward.x_t, abar, s, 0.3)
    forward = model.training_forward(x0, t, noise)
    loss = edit_consistency_loss(model, t, forward, 10_000, torch.Generator().manual_seed(7))
    prototype = torch.randint(
        0, model.num_prototypes, (6,), generator=torch.Generator().manual_seed(7)
    )
    rows = torch.arange(6)
    target = s.max(0).values[prototype]
    shifted = target > s[rows, prototype]  # a row already at the batch's largest is not edited
    assert shifted.sum() >= 4
    after = torch.where(shifted, model.encode(x0 + 0.3)[rows, prototype].detach(), target)
    missed = (after - target) / s.std(0)[prototype]
    expected = (missed.square() + shifted * (0.3 / 0.35) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-3)
