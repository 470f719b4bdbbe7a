"""Samplers: DDPM ancestral, DDIM (any eta, respaced steps), DPM-Solver++ 2M / 3M and DDIM
inversion.

Each sampler is a generator yielding one :class:`SamplerStep` per network evaluation, so callers
can trace the trajectory (t, x_t, predicted x0); :func:`run_sampler` drives one to the end with an
optional callback and progress bar. The denoiser is any ``eps_fn(x_t, t) -> eps`` with t an int64
(B,) tensor. ``after_step`` (an :data:`AfterStep`) may change the sample each step hands on, as
diffusers' ``callback_on_step_end`` changes its latents (e.g. to keep a known region, as
:mod:`patronus.interpret.region` does).

The non-network part of every step is one call of the fused ``patronus.ops.scheduler_step``
(equations in ``csrc/scheduler_step/step.h``): DDIM, DDPM on any pair of levels, and the DDIM
inversion as a DDIM step towards a noisier level. The loop never synchronises with the device:
timesteps and random states are prepared on the device before it starts, and noise is drawn inside
the step from a seed taken from the ``generator`` (Philox, counter = step), so a generator makes
every stochastic sampler reproducible.

- DDIM from level t to the previous respaced level (the clean data after t = 0).
- DDPM ancestral over all T steps, variance "posterior" (beta_t (1 - abar_{t-1}) / (1 - abar_t))
  or "beta".
- DPM-Solver++ 2M / 3M (multistep, data prediction; Lu et al. 2022): deterministic, one network
  call per step, the previous steps' x0 predictions passed to the fused step; the first steps
  and, as in diffusers, the last (to clean data) and with fewer than 15 steps the second-to-last
  are of lower order. Levels spaced as diffusers' "linspace" (round(i (T - 1) / steps),
  i = steps .. 1, then clean data): no call is spent at t = 0.
- DDIM inversion from clean data up to T - 1; the step from level a to level b > a evaluates the
  network at (x_a, b), mirroring the decoder's step from b to a.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import torch

from patronus.diffusion.graphed_step import GraphedStep
from patronus.diffusion.parametrization import dynamic_thresholds, predicted_x0
from patronus.diffusion.schedules import NoiseSchedule
from patronus.diffusion.timesteps import respaced_timesteps, solver_timesteps
from patronus.ops.scheduler import scheduler_step

# eps_fn(x_t, t) -> the network's output, or (conditioned, null-conditioned) outputs, which the
# step combines as null + guidance_scale (conditioned - null)
EpsFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
# after_step(step) -> the sample the step hands on (B, C, H, W), yielded as its ``sample`` and
# where the next step starts; called once per step, after the step, with the step as computed
AfterStep = Callable[["SamplerStep"], torch.Tensor]

SAMPLERS = ("ddim", "ddpm", "dpmpp-2m", "dpmpp-3m")
SOLVER_ORDERS = {"dpmpp-2m": 2, "dpmpp-3m": 3}
# sampling from noise by default: DPM-Solver++ 2M with 20 network calls, chosen from the measured
# calls-against-quality curve (README); every default sampler and step count refers to these
DEFAULT_SAMPLER = "dpmpp-2m"
DEFAULT_STEPS = 20
DDPM_VARIANCES = ("posterior", "beta")


@dataclass(frozen=True)
class SamplerStep:
    """One network evaluation of a sampler."""

    index: int  # 0-based position in the trajectory
    t: int  # timestep the network was evaluated at
    x_t: torch.Tensor  # the input sample of this step (B, C, H, W)
    pred_x0: torch.Tensor  # the predicted clean sample, after any clipping (B, C, H, W)
    sample: torch.Tensor  # the step's output: the next (less noisy, or for inversion noisier) x
    # the noise level of ``sample``: the timestep the next step starts from (-1: the clean data;
    # for the inversion, t itself)
    sample_t: int


def _check_step_settings(dynamic_threshold: float | None, guidance_scale: float | None) -> None:
    if dynamic_threshold is not None and not 0.0 < dynamic_threshold <= 1.0:
        raise ValueError(f"dynamic_threshold must be in (0, 1], got {dynamic_threshold}")
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")


@dataclass(frozen=True)
class StepOptions:
    """How each step turns the network's output into the next sample."""

    clip_x0: bool = False  # clip predicted x0 to [-1, 1] (and re-derive the noise from it)
    dynamic_threshold: float | None = None  # quantile of |x0| per sample (Imagen), e.g. 0.995
    prediction: str = "epsilon"  # what the network predicts: "epsilon", "sample", "v_prediction"
    # w of null + w (conditioned - null), where the network returns both (see EpsFn)
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_step_settings(self.dynamic_threshold, self.guidance_scale)


@dataclass(frozen=True)
class SamplerOptions:
    """How a model samples: the sampler, its steps, and how each step is taken."""

    # "dpmpp-2m" / "dpmpp-3m": DPM-Solver++ multistep of order 2 / 3 (deterministic); "ddim":
    # respaced steps with ``eta``; "ddpm": all T ancestral steps
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS  # network calls of DDIM and DPM-Solver++ (DDPM runs all T steps)
    eta: float = 0.0  # DDIM stochasticity (0: deterministic)
    clip_x0: bool = False  # clip every predicted x0 to [-1, 1]
    dynamic_threshold: float | None = None  # per-sample quantile of |x0| (Imagen), e.g. 0.995
    variance: str = "posterior"  # DDPM: "posterior" or "beta"
    cuda_graph: bool = False  # capture one step (network + scheduler) as a CUDA graph, replay it
    guidance_scale: float | None = None  # w of the prototype guidance (None: the model's own)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.variance not in DDPM_VARIANCES:
            raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {self.variance!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be finite and >= 0, got {self.eta}")
        _check_step_settings(self.dynamic_threshold, self.guidance_scale)
        if self.sampler in SOLVER_ORDERS and self.cuda_graph:
            raise ValueError("cuda_graph replays DDIM and DDPM steps; DPM-Solver++ runs eagerly")
        if self.sampler in SOLVER_ORDERS and self.eta != 0:
            raise ValueError(
                f"{self.sampler} is deterministic: eta must be 0, got {self.eta} "
                '(eta > 0 needs sampler="ddim")'
            )

    @classmethod
    def of(cls, options: SamplerOptions | int | None = None, **changes) -> SamplerOptions:
        """``options`` (or the defaults; an int is the number of steps) with ``changes`` to its
        fields, e.g. ``SamplerOptions.of(20, clip_x0=True)``."""
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; the options are {names}")
        if options is None or isinstance(options, int):
            base = cls() if options is None else cls(steps=options)
        elif isinstance(options, cls):
            base = options
        else:
            raise TypeError(f"options must be SamplerOptions or a number of steps, got {options!r}")
        return replace(base, **changes)

    def replace(self, **changes) -> SamplerOptions:
        return replace(self, **changes)

    @property
    def step_options(self) -> StepOptions:
        return StepOptions(
            clip_x0=self.clip_x0,
            dynamic_threshold=self.dynamic_threshold,
            guidance_scale=1.0 if self.guidance_scale is None else self.guidance_scale,
        )

    def network_calls(self, schedule: NoiseSchedule) -> int:
        """Network evaluations per image."""
        return schedule.timesteps if self.sampler == "ddpm" else self.steps


def sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    options: SamplerOptions,
    generator: torch.Generator | None = None,
    after_step: AfterStep | None = None,
) -> Iterator[SamplerStep]:
    """The trajectory from x_T to clean data with the sampler ``options`` names."""
    if options.sampler == "ddpm":
        return ddpm_sampling(
            eps_fn, x_T, schedule, generator=generator, variance=options.variance,
            options=options.step_options, cuda_graph=options.cuda_graph, after_step=after_step,
        )  # fmt: skip
    if options.sampler in SOLVER_ORDERS:
        return dpm_solver_sampling(
            eps_fn, x_T, schedule, options.steps, SOLVER_ORDERS[options.sampler],
            options=options.step_options, after_step=after_step,
        )  # fmt: skip
    return ddim_sampling(
        eps_fn, x_T, schedule, options.steps, options.eta, generator=generator,
        options=options.step_options, cuda_graph=options.cuda_graph, after_step=after_step,
    )  # fmt: skip


def _random_states(
    steps: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(steps, 2) int64 [seed, offset] rows on ``device``: one seed drawn from ``generator``
    (on the device, without synchronising), the step index as the Philox offset."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator_device(generator))
    offsets = torch.arange(steps, dtype=torch.long, device=device)
    return torch.stack([seed.to(device).expand(steps), offsets], dim=1)


def generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _step(
    x: torch.Tensor,
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    current: torch.Tensor,
    target: torch.Tensor,
    table: torch.Tensor,
    options: StepOptions,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused step; ``output`` is the network's, or (conditioned, null) for guidance."""
    output, null = output if isinstance(output, tuple) else (output, None)
    w = options.guidance_scale
    threshold = None
    if options.dynamic_threshold is not None:
        if options.prediction != "epsilon":
            raise ValueError("dynamic_threshold is implemented for epsilon predictions")
        padded = torch.cat([table, table.new_ones(1)])
        abar = padded[current].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        guided = output if null is None else null + w * (output - null)
        x0 = predicted_x0(x, guided, abar, options.prediction)
        threshold = dynamic_thresholds(x0, options.dynamic_threshold)
    return scheduler_step(
        x, output, current, target, table, prediction=options.prediction,
        clip=1.0 if options.clip_x0 else None, threshold=threshold, null_output=null,
        guidance_scale=w, validate=False, **kwargs,
    )  # fmt: skip


def _runner(
    eps_fn: EpsFn,
    table: torch.Tensor,
    options: StepOptions,
    example: torch.Tensor,
    cuda_graph: bool,
    stochastic: bool,
    **step_kwargs,
):
    """The step as ``(x, net_t, current, target, rng) -> (x_next, x0)``: eager, or replayed from a
    CUDA graph captured on first use."""

    def body(x, net_t, current, target, rng):
        output = eps_fn(x, net_t)
        return _step(x, output, current, target, table, options, rng_state=rng, **step_kwargs)

    return GraphedStep(body, example, stochastic) if cuda_graph else body


def _levels(x: torch.Tensor, values: list[int]) -> list[torch.Tensor]:
    """One contiguous (B,) int64 device tensor per level, built before the loop (contiguous, as
    training passes t: a compiled denoiser then needs no second graph for stride-0 levels)."""
    table = torch.tensor(values, dtype=torch.long, device=x.device)
    return list(table[:, None].repeat(1, x.shape[0]).unbind(0))


def ddim_sampling(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    eta: float = 0.0,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    options: StepOptions | None = None,
    cuda_graph: bool = False,
    after_step: AfterStep | None = None,
) -> Iterator[SamplerStep]:
    """DDIM from x_T over ``steps`` respaced timesteps down to clean data; ``cuda_graph``
    replays each step (network + scheduler) from one captured CUDA graph; ``after_step``: see
    :data:`AfterStep`."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    options = options or StepOptions(clip_x0=clip_x0)
    timesteps = respaced_timesteps(schedule.timesteps, steps)
    descending = timesteps[::-1]
    table = schedule.alphas_cumprod.to(x_T.device)
    current = _levels(x_T, descending)
    targets = _levels(x_T, [*descending[1:], -1])
    states = _random_states(len(descending), generator, x_T.device) if eta > 0 else None
    step = _runner(eps_fn, table, options, x_T, cuda_graph, states is not None, eta=eta)
    levels = _Levels(descending, current, current, targets, [*descending[1:], -1])
    return _walk(step, x_T, levels, states, after_step)


def solver_orders(steps: int, order: int) -> list[int]:
    """The order of each DPM-Solver++ step, as diffusers' ``lower_order_final``: warm-up from
    order 1, the last step (to clean data) first order, and below 15 steps the second-to-last of
    order at most 2."""
    orders = [min(order, index + 1) for index in range(steps)]
    if steps < 15 and steps >= 2:
        orders[-2] = min(orders[-2], 2)
    orders[-1] = 1
    return orders


def dpm_solver_sampling(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 20,
    order: int = 2,
    options: StepOptions | None = None,
    after_step: AfterStep | None = None,
) -> Iterator[SamplerStep]:
    """DPM-Solver++ multistep of ``order`` (2 or 3; 1 is DDIM) from x_T over ``steps`` network
    calls to clean data. Deterministic: no generator. ``after_step``: see :data:`AfterStep`."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    options = options or StepOptions()
    descending = solver_timesteps(schedule.timesteps, steps)
    table = schedule.alphas_cumprod.to(x_T.device)
    levels = _levels(x_T, descending)
    targets = _levels(x_T, [*descending[1:], -1])
    return _multistep_walk(
        eps_fn, x_T, descending, levels, targets, table, options, order, after_step
    )


def _multistep_walk(
    eps_fn: EpsFn,
    x: torch.Tensor,
    descending: list[int],
    levels: list[torch.Tensor],
    targets: list[torch.Tensor],
    table: torch.Tensor,
    options: StepOptions,
    order: int,
    after_step: AfterStep | None,
) -> Iterator[SamplerStep]:
    """DPM-Solver++ steps from ``levels[i]`` to ``targets[i]``, each passing the x0 predictions
    of the steps before it that its order needs."""
    orders = solver_orders(len(descending), order)
    history: list[torch.Tensor] = []  # the previous x0 predictions, most recent first
    for index, t in enumerate(descending):
        previous = history[: orders[index] - 1]
        x_next, x0 = _step(
            x, eps_fn(x, levels[index]), levels[index], targets[index], table, options,
            mode="dpmsolver++", previous_x0=previous,
            previous_timestep=[levels[index - 1 - i] for i in range(len(previous))],
        )  # fmt: skip
        sample_t = descending[index + 1] if index + 1 < len(descending) else -1
        step = handed_on(SamplerStep(index, t, x, x0, x_next, sample_t), after_step)
        yield step
        history = [x0, *history[:1]]
        x = step.sample


def ddpm_sampling(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    variance: str = "posterior",
    options: StepOptions | None = None,
    cuda_graph: bool = False,
    after_step: AfterStep | None = None,
) -> Iterator[SamplerStep]:
    """DDPM ancestral sampling over all T steps (``cuda_graph`` and ``after_step`` as in
    :func:`ddim_sampling`)."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {variance!r}")
    options = options or StepOptions(clip_x0=clip_x0)
    descending = list(range(schedule.timesteps - 1, -1, -1))
    table = schedule.alphas_cumprod.to(x_T.device)
    current = _levels(x_T, descending)
    targets = _levels(x_T, [t - 1 for t in descending])
    states = _random_states(len(descending), generator, x_T.device)
    step = _runner(eps_fn, table, options, x_T, cuda_graph, True, mode="ddpm", variance=variance)
    levels = _Levels(descending, current, current, targets, [t - 1 for t in descending])
    return _walk(step, x_T, levels, states, after_step)


def ddim_inversion(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    cuda_graph: bool = False,
    guidance_scale: float = 1.0,
) -> Iterator[SamplerStep]:
    """Deterministic DDIM encoding of clean data x0 into x_{T-1} (= x_T of the decoder), with
    the guidance scale decoding will use where ``eps_fn`` returns (conditioned, null)."""
    timesteps = respaced_timesteps(schedule.timesteps, steps)
    table = schedule.alphas_cumprod.to(x0.device)
    current = _levels(x0, [-1, *timesteps[:-1]])
    targets = _levels(x0, timesteps)
    options = StepOptions(guidance_scale=guidance_scale)
    step = _runner(eps_fn, table, options, x0, cuda_graph, False)
    # the network sees the target level: the inversion predicts the noise it is moving towards
    return _walk(step, x0, _Levels(timesteps, targets, current, targets, timesteps), None, None)


@dataclass(frozen=True)
class _Levels:
    """The levels of a walk's steps: step i evaluates the network at ``network[i]`` (reported as
    ``shown[i]``) and moves the sample from ``current[i]`` to ``targets[i]`` (device tensors),
    the level reported as its ``sample_t[i]``."""

    shown: list[int]
    network: list[torch.Tensor]
    current: list[torch.Tensor]
    targets: list[torch.Tensor]
    sample_t: list[int]


def _walk(
    step: Callable,
    x: torch.Tensor,
    levels: _Levels,
    states: torch.Tensor | None,
    after_step: AfterStep | None,
) -> Iterator[SamplerStep]:
    """Run ``step`` through ``levels``, with the random state ``states[i]`` if any."""
    for index, t in enumerate(levels.shown):
        rng = None if states is None else states[index]
        x_next, x0 = step(
            x, levels.network[index], levels.current[index], levels.targets[index], rng
        )
        taken = handed_on(SamplerStep(index, t, x, x0, x_next, levels.sample_t[index]), after_step)
        yield taken
        x = taken.sample


def handed_on(step: SamplerStep, after_step: AfterStep | None) -> SamplerStep:
    """``step`` with the sample ``after_step`` hands on instead of its own (itself without one)."""
    if after_step is None:
        return step
    sample = after_step(step)
    if not isinstance(sample, torch.Tensor) or sample.shape != step.sample.shape:
        got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise ValueError(
            f"after_step must return a tensor of shape {tuple(step.sample.shape)}, got {got}"
        )
    return replace(step, sample=sample)


def run_sampler(
    trajectory: Iterator[SamplerStep],
    callback: Callable[[SamplerStep], None] | None = None,
    progress: bool = False,
    total: int | None = None,
    description: str = "sampling",
) -> torch.Tensor:
    """Drive a sampler to its end; returns the last step's ``sample``."""
    if progress:
        from tqdm.auto import tqdm

        trajectory = tqdm(trajectory, total=total, desc=description, leave=False)
    last = None
    for step in trajectory:
        if callback is not None:
            callback(step)
        last = step
    if last is None:
        raise ValueError("the sampler made no steps")
    return last.sample
