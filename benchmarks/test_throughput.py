"""Training-step and sampling-step throughput of the paper configurations (images/s).

Each configuration runs with the pure-PyTorch backends (PATRONUS_BACKEND=torch) and with the best
available ones (auto). GPU runs use the paper's batch sizes; CPU runs use a batch of 8 so the
suite stays short on a 2-core machine (the batch is saved with every result).
"""

from __future__ import annotations

import pytest
import torch
from conftest import device_name, synchronize

from patronus import Patronus
from patronus.models.presets import get_preset

PRESETS = ["fmnist32", "celeba64"]
BACKENDS = ["torch", "auto"]
CPU_BATCH = 8


def setup_model(preset_name: str, device: torch.device, train: bool):
    preset = get_preset(preset_name)
    batch = preset.batch_size if device.type == "cuda" else CPU_BATCH
    torch.manual_seed(0)
    model = Patronus(preset.model).to(device).train(train)
    x0 = torch.rand(batch, *preset.model.image_shape, device=device) * 2 - 1
    return model, x0, batch


def record(benchmark, preset: str, backend: str, batch: int, device: torch.device, kind: str):
    benchmark.group = f"{kind} {preset}"
    benchmark.extra_info.update(
        preset=preset, backend=backend, batch=batch, kind=kind, device=device_name(device)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_training_step(benchmark, preset, backend, device, monkeypatch):
    monkeypatch.setenv("PATRONUS_BACKEND", backend)
    model, x0, batch = setup_model(preset, device, train=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp = device.type == "cuda"
    timesteps = model.config.diffusion.timesteps

    def step():
        t = torch.randint(0, timesteps, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.training_loss(x0, t, torch.randn_like(x0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)

    step()  # warm-up
    record(benchmark, preset, backend, batch, device, "training step")
    benchmark(step)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_sampling_step(benchmark, preset, backend, device, monkeypatch):
    """One DDIM step: a network evaluation and the scheduler update, under no_grad."""
    monkeypatch.setenv("PATRONUS_BACKEND", backend)
    model, x0, batch = setup_model(preset, device, train=False)
    with torch.no_grad():
        s = model.encode(x0)
    x_t = torch.randn_like(x0)
    amp = device.type == "cuda"

    @torch.no_grad()
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            trajectory = model.sample_steps(s, steps=2, x_T=x_t)
            next(trajectory)
        synchronize(device)

    step()
    record(benchmark, preset, backend, batch, device, "sampling step")
    benchmark(step)
