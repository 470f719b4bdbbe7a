"""The scheduler step alone (fused vs eager PyTorch vs diffusers vs torch.compile, in GB/s and as
a fraction of a device-to-device copy measured in the same run), and whole sampling loops.

The step benchmarks one DDIM update (eta = 0, epsilon prediction, float32) that reads x and the
model output and writes x_prev and x0, and one DPM-Solver++ 3M update (diffusers'
DPMSolverMultistepScheduler.step in the middle of a 20-step loop against the fused step with the
two previous x0 predictions passed in), which also reads the two previous predictions; both
fused steps run as the samplers call them, validate=False (the value checks read tensors, a host
synchronisation on a GPU). Whole loops: images/s of 50-step DDIM (everywhere) and
1000-step DDIM (CUDA only) of the paper's Fashion-MNIST model: eager (PyTorch step), patronus
(fused step), with the UNet compiled, with CUDA graphs, and the network calls alone (the
non-network share of each loop's time).
"""

from __future__ import annotations

import pytest
import torch
from conftest import device_name, synchronize
from original_code import missing_reason, original_ddim_sampling, original_diffusion, original_model

from patronus import Patronus
from patronus.diffusion import NoiseSchedule
from patronus.models.presets import get_preset
from patronus.ops.scheduler import scheduler_step

STEP_SHAPES = {"64x3x64x64": (64, 3, 64, 64), "16x1x224x224": (16, 1, 224, 224),
               "256x4x64x64": (256, 4, 64, 64)}  # fmt: skip
STEP_PROVIDERS = ["copy", "eager", "compile", "diffusers", "patronus"]
TABLE = NoiseSchedule.from_name("linear", 1000).alphas_cumprod
T, T_PREV = 500, 480


def eager_step(x, eps, abar_t, abar_prev):
    """The DDIM update as users write it in PyTorch."""
    x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps, x0


_compiled = {}


def step_provider(name, device):
    table32 = TABLE.float().to(device)
    abar_t, abar_prev = table32[T], table32[T_PREV]
    if name == "eager":
        return lambda x, eps: eager_step(x, eps, abar_t, abar_prev)
    if name == "compile":
        compiled = _compiled.setdefault("step", torch.compile(eager_step))
        return lambda x, eps: compiled(x, eps, abar_t, abar_prev)
    if name == "diffusers":
        diffusers = pytest.importorskip("diffusers")
        scheduler = diffusers.DDIMScheduler(clip_sample=False)
        scheduler.set_timesteps(50)  # prev = t - 20
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
        return lambda x, eps: scheduler.step(eps, T, x, return_dict=False)
    table = TABLE.to(device)
    current = torch.full((1,), T, device=device)
    target = torch.full((1,), T_PREV, device=device)
    if name == "copy":
        return lambda x, eps: x.clone()
    return lambda x, eps: scheduler_step(  # as the samplers call it: no value checks (host syncs)
        x, eps, current.expand(x.shape[0]), target.expand(x.shape[0]), table, validate=False
    )


@pytest.mark.parametrize("provider", STEP_PROVIDERS)
@pytest.mark.parametrize("shape_name", list(STEP_SHAPES))
def test_step(benchmark, provider, shape_name, device):
    shape = STEP_SHAPES[shape_name]
    x = torch.randn(shape, device=device)
    eps = torch.randn(shape, device=device)
    fn = step_provider(provider, device)

    def run():
        fn(x, eps)
        synchronize(device)

    run()
    # bytes moved: a copy reads and writes one tensor; a step reads two and writes two
    tensors = 2 if provider == "copy" else 4
    benchmark.extra_info.update(
        provider=provider, shape=shape_name, kind="scheduler step", mode="step",
        bytes=tensors * x.numel() * x.element_size(), batch=shape[0], dims=shape_name,
        dtype="float32", device=device_name(device),
    )  # fmt: skip
    benchmark.group = f"scheduler step {shape_name}"
    benchmark(run)


MULTISTEP_SHAPES = {"64x3x64x64": (64, 3, 64, 64), "256x4x64x64": (256, 4, 64, 64)}
MULTISTEP_INDEX = 10  # the step of a 20-step loop that is benchmarked (third order there)


def multistep_provider(name, device, shape):
    """One DPM-Solver++ 3M step at ``MULTISTEP_INDEX`` of a 20-step loop: (x, eps) -> outputs."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=3)
    scheduler.set_timesteps(20)
    levels = [int(scheduler.timesteps[MULTISTEP_INDEX - k]) for k in range(3)]
    history = [torch.randn(shape, device=device) for _ in range(2)]  # x0 of the last two steps
    if name == "copy":
        return lambda x, eps: x.clone()
    if name == "diffusers":
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)

        def diffusers_step(x, eps):
            scheduler._step_index, scheduler.lower_order_nums = MULTISTEP_INDEX, 3
            scheduler.model_outputs = [None, history[1], history[0]]  # shifted by step()
            return scheduler.step(eps, levels[0], x, return_dict=False)

        return diffusers_step
    table = TABLE.to(device)
    current, target, s1, s2 = (
        torch.full((shape[0],), level, device=device)
        for level in (levels[0], int(scheduler.timesteps[MULTISTEP_INDEX + 1]), *levels[1:])
    )
    return lambda x, eps: scheduler_step(
        x, eps, current, target, table, mode="dpmsolver++", previous_x0=history,
        previous_timestep=[s1, s2], validate=False,
    )  # fmt: skip


@pytest.mark.parametrize("provider", ["copy", "diffusers", "patronus"])
@pytest.mark.parametrize("shape_name", list(MULTISTEP_SHAPES))
def test_multistep_step(benchmark, provider, shape_name, device):
    shape = MULTISTEP_SHAPES[shape_name]
    x = torch.randn(shape, device=device)
    eps = torch.randn(shape, device=device)
    fn = multistep_provider(provider, device, shape)

    def run():
        fn(x, eps)
        synchronize(device)

    run()
    # a copy reads and writes one tensor; the fused step reads x, eps and two previous x0 and
    # writes x_prev and x0 (diffusers' step moves at least as much)
    tensors = 2 if provider == "copy" else 6
    benchmark.extra_info.update(
        provider=provider, shape=shape_name, kind="scheduler step", solver="DPM-Solver++ 3M",
        mode="step", bytes=tensors * x.numel() * x.element_size(), batch=shape[0],
        dims=shape_name, dtype="float32", device=device_name(device),
    )  # fmt: skip
    benchmark.group = f"DPM-Solver++ 3M step {shape_name}"
    benchmark(run)


LOOPS = {"ddim50": 50, "ddim1000": 1000}
# eager: PyTorch's step, no graph; patronus: the fused step; -compiled: compile_denoiser();
# -graph: one CUDA graph per step. network / network-graph: the loop's network calls alone, for
# the non-network share of each loop's time.
LOOP_PROVIDERS = ["network", "eager", "patronus", "patronus-compiled", "network-graph",
                  "patronus-graph"]  # fmt: skip
CUDA_ONLY = ("patronus-compiled", "network-graph", "patronus-graph")


def network_loop(model, s, x_T, steps: int, graph: bool):
    """The network evaluations of a ``steps``-step DDIM loop, without the scheduler step."""
    from patronus.diffusion.graphed_step import GraphedStep
    from patronus.diffusion.timesteps import respaced_timesteps

    eps_fn = model.eps_fn(s)

    def body(x, net_t, current, target, rng):
        return x, eps_fn(x, net_t)

    call = GraphedStep(body, x_T, stochastic=False) if graph else body
    levels = [torch.full((x_T.shape[0],), t, device=x_T.device) for t in
              respaced_timesteps(model.schedule.timesteps, steps)[::-1]]  # fmt: skip

    def run():
        for t in levels:
            call(x_T, t, t, t, None)

    return run


@pytest.mark.parametrize("provider", LOOP_PROVIDERS)
@pytest.mark.parametrize("loop", list(LOOPS))
def test_sampling_loop(benchmark, provider, loop, device, monkeypatch):
    if loop == "ddim1000" and device.type != "cuda":
        pytest.skip("1000-step loops run on CUDA only")
    if provider in CUDA_ONLY and device.type != "cuda":
        pytest.skip("CUDA graphs and compiling the UNet (minutes on a CPU) are measured on CUDA")
    preset = get_preset("fmnist32")
    batch = 64 if device.type == "cuda" else 4
    torch.manual_seed(0)
    model = Patronus(preset.model).to(device).eval()
    if provider == "patronus-compiled":
        model.compile_denoiser()
    s = torch.rand(batch, preset.model.num_prototypes, device=device)
    x_T = torch.randn(batch, *preset.model.image_shape, device=device)
    graph = provider.endswith("graph")
    if provider == "eager":
        monkeypatch.setenv("PATRONUS_BACKEND", "torch")
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if provider.startswith("network"):
        with torch.no_grad(), amp:
            network = network_loop(model, s, x_T, LOOPS[loop], graph)

    def run():
        with torch.no_grad(), amp:
            if provider.startswith("network"):
                network()
            else:
                model.sample(s, LOOPS[loop], x_T=x_T, cuda_graph=graph)
        synchronize(device)

    run()
    benchmark.extra_info.update(
        provider=provider, loop=loop, batch=batch, kind="sampling loop",
        device=device_name(device), cuda_graph=graph,
    )  # fmt: skip
    benchmark.group = f"sampling loop {loop}"
    benchmark.pedantic(run, rounds=3 if device.type == "cuda" else 1, warmup_rounds=0)


# Matched quality: the original pipeline (its model code and its 1000-step DDIM loop) against
# ours with the samplers and call counts that reach its FID (benchmarks/solver_curve.py), and our
# default, on the architecture of the model the curve was measured on (the shipped fmnist-cpu;
# random weights: speed does not depend on them). images/s ratios against the original come from
# one run.
MATCHED_PROVIDERS = {"original-ddim-1000": ("ddim", 1000), "patronus-ddim-50": ("ddim", 50),
                     "patronus-dpmpp-2m-15": ("dpmpp-2m", 15),
                     "patronus-dpmpp-2m-10": ("dpmpp-2m", 10)}  # fmt: skip


@pytest.mark.parametrize("provider", list(MATCHED_PROVIDERS))
def test_matched_quality_sampling(benchmark, provider, device):
    sampler, calls = MATCHED_PROVIDERS[provider]
    preset = get_preset("fmnist-cpu")
    batch = 64 if device.type == "cuda" else 16
    torch.manual_seed(0)
    x_T = torch.randn(batch, *preset.model.image_shape, device=device)
    if provider.startswith("original"):
        if missing_reason() is not None:
            pytest.skip(missing_reason())
        model = original_model(preset.model).to(device).eval()
        diffusion = original_diffusion(preset.model.diffusion.timesteps, device)
        s = torch.rand(batch, preset.model.num_prototypes, device=device)

        def sample():
            return original_ddim_sampling(model, diffusion, x_T, s)
    else:
        model = Patronus(preset.model).to(device).eval()
        s = torch.rand(batch, preset.model.num_prototypes, device=device)

        def sample():
            return model.sample(s, calls, x_T=x_T, sampler=sampler, clip_x0=True)

    def run():
        with torch.no_grad():
            sample()
        synchronize(device)

    benchmark.extra_info.update(
        provider=provider, sampler=sampler, calls=calls, batch=batch, kind="matched sampling",
        device=device_name(device),
    )  # fmt: skip
    benchmark.group = "sampling at matched quality"
    benchmark.pedantic(run, rounds=3 if device.type == "cuda" else 1, warmup_rounds=0)
