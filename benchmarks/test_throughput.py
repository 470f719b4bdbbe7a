"""Training-step and sampling-step throughput of the paper configurations (images/s).

Each configuration runs with the pure-PyTorch backends (PATRONUS_BACKEND=torch) and with the best
available ones (auto). GPU runs use the paper's batch sizes; CPU runs use a batch of 8 so the
suite stays short on a 2-core machine (the batch is saved with every result).

The training variants of the paper's Fashion-MNIST model put side by side: the original code's
model trained as the original trains it (float16 autocast and a GradScaler on CUDA, activations
in float32; see original_code.py), and ours in float32, bf16 autocast, bf16 + channels_last, and
bf16 + channels_last + torch.compile (CUDA only: compiling the UNet takes minutes on a CPU).
"""

from __future__ import annotations

import pytest
import torch
from conftest import device_name, synchronize
from original_code import (
    missing_reason,
    original_diffusion,
    original_model,
    original_training_step,
)

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


def training_step(model: Patronus, x0: torch.Tensor, amp: bool):
    """One optimizer step of ``model`` on ``x0`` (bf16 autocast if ``amp``), synchronised."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    timesteps = model.config.diffusion.timesteps

    def step():
        t = torch.randint(0, timesteps, (x0.shape[0],), device=x0.device)
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.training_loss(x0, t, torch.randn_like(x0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(x0.device)

    return step


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
    step = training_step(model, x0, amp=device.type == "cuda")
    step()  # warm-up
    record(benchmark, preset, backend, batch, device, "training step")
    benchmark(step)


TRAINING_VARIANTS = ["original", "fp32", "bf16", "bf16-channels-last", "bf16-channels-last-compile"]


@pytest.mark.parametrize("variant", TRAINING_VARIANTS)
def test_training_variants(benchmark, variant, device):
    preset = get_preset("fmnist32")
    batch = preset.batch_size if device.type == "cuda" else CPU_BATCH
    timesteps = preset.model.diffusion.timesteps
    torch.manual_seed(0)
    x0 = torch.rand(batch, *preset.model.image_shape, device=device) * 2 - 1
    if variant == "original":
        if missing_reason() is not None:
            pytest.skip(missing_reason())
        model = original_model(preset.model).to(device).train()
        diffusion = original_diffusion(timesteps, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

        def step():
            original_training_step(model, diffusion, optimizer, scaler, x0, timesteps)
            synchronize(device)

    else:
        if variant.endswith("compile") and device.type != "cuda":
            pytest.skip("compiling the UNet takes minutes on a CPU: measured on CUDA only")
        model = Patronus(preset.model).to(device).train()
        if "channels-last" in variant:
            model = model.to(memory_format=torch.channels_last)
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if variant.endswith("compile"):
            model.compile_denoiser()
        step = training_step(model, x0, amp=variant != "fp32")

    step()  # warm-up (and compilation)
    step()
    benchmark.group = "training fmnist32"
    benchmark.extra_info.update(
        kind="training variant", variant=variant, batch=batch, device=device_name(device)
    )
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
