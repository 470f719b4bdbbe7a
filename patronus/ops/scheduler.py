"""The fused scheduler step: one pass from x_t and the model output to x_prev and predicted x0.

``scheduler_step`` runs the op ``patronus::scheduler_step``: on the ``cpp`` backend one launch of
the extension's CPU or CUDA kernel (no host synchronisation, no allocation beyond the outputs), on
``torch`` the same equations in PyTorch (``scheduler_step_ref``). The update equations are written
out in ``csrc/scheduler_step/step.h``:

- DDIM (any eta; also the DDIM inversion, when the target level is noisier than the current one);
- DDPM ancestral, between any two levels, with the posterior or the beta variance;
- DPM-Solver++ multistep (data prediction) of order 1, 2 or 3: the previous steps' x0 predictions
  (this op's second output) and their levels are passed in (``previous_x0``, ``previous_timestep``),
  so the step stays one pass with no state of its own;
- x0 clipping to [-clip, clip], or dynamic thresholding (per-sample ``threshold``: clamp and
  rescale), optionally re-deriving the noise from the clipped x0;
- model outputs predicting the noise ("epsilon"), the clean sample ("sample") or v ("v_prediction");
- per-sample levels: every sample of a batch may be at its own step (level -1 is clean data);
- noise passed in, or drawn inside the kernel from ``rng_state`` = int64 [seed, offset] with
  Philox4x32-10 (the same numbers on CPU, CUDA and in the reference), so steps are reproducible and
  CUDA-graph capturable.

The op ``patronus::scheduler_step`` takes the arguments in kernel form (levels as (B,) int64, a
float64 table, integer enums); ``scheduler_step`` converts and checks them. Backends
(``patronus._backend``): ``cpp``, the extension's kernel ``patronus::scheduler_step_fwd`` (CPU and,
where built, CUDA); ``torch``, the reference ``scheduler_step_ref``. The step is not differentiable
(samplers run without gradients): its autograd raises, naming the reference to differentiate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from patronus import _backend
from patronus.ops._validation import check_float, opmath_dtype

MODES = {"ddim": 0, "ddpm": 1, "dpmsolver++": 2}
MAX_SOLVER_ORDER = 3
PREDICTIONS = {"epsilon": 0, "sample": 1, "v_prediction": 2}
VARIANCES = {"posterior": 0, "beta": 1}


# ------------------------------------------------------------------------------------ checks
def _levels(value: int | torch.Tensor, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """An int or an integer tensor (scalar or (B,)) -> (B,) int64; anything else is refused
    (a float level would be truncated)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer levels, got a {value.dtype} tensor")
        if value.dim() == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(
                f"{name} must be an int or (B,) = ({batch},), got {tuple(value.shape)}"
            )
        return value.to(device=device, dtype=torch.long)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(value).__name__}")
    return torch.full((batch,), value, dtype=torch.long, device=device)


def _check_values(
    mode: str,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    threshold: torch.Tensor | None,
    previous_timestep: list[torch.Tensor],
) -> None:
    """Checks that read tensor values (a host synchronisation on a GPU)."""
    steps = alphas_cumprod.shape[0]
    named = [("timestep", timestep), ("prev_timestep", prev_timestep)]
    named += [(f"previous_timestep[{i}]", levels) for i, levels in enumerate(previous_timestep)]
    for name, levels in named:
        if levels.numel() and (int(levels.min()) < -1 or int(levels.max()) >= steps):
            raise ValueError(f"{name} must lie in [-1, {steps}) (-1: clean data)")
    if mode in ("ddpm", "dpmsolver++") and bool((prev_timestep >= timestep).any()):
        raise ValueError(
            f"{mode} steps go from a noisier level to a cleaner one: every timestep must be "
            "greater than its prev_timestep"
        )
    newer = timestep
    for levels in previous_timestep:
        if bool((levels <= newer).any()):
            raise ValueError(
                "previous_timestep must list noisier and noisier levels, each above the "
                "timestep (most recent first)"
            )
        newer = levels
    if threshold is not None and not bool((torch.isfinite(threshold) & (threshold > 0)).all()):
        raise ValueError("threshold values must be finite and > 0")
    if not bool(((alphas_cumprod >= 0) & (alphas_cumprod <= 1)).all()):
        raise ValueError(
            "alphas_cumprod values must lie in [0, 1] (cumulative products of 1 - beta)"
        )


def _check_table(alphas_cumprod: torch.Tensor) -> None:
    """The schedule table's type and shape (no values read)."""
    if not isinstance(alphas_cumprod, torch.Tensor) or not alphas_cumprod.is_floating_point():
        raise TypeError("alphas_cumprod must be a floating-point tensor, the (T,) schedule table")
    if alphas_cumprod.dim() != 1 or alphas_cumprod.shape[0] == 0:
        raise ValueError(
            f"alphas_cumprod must be the (T,) schedule table, got shape "
            f"{tuple(alphas_cumprod.shape)}"
        )


def _choice(table: dict[str, int], name: str, what: str) -> int:
    if name not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {name!r}")
    return table[name]


# -------------------------------------------------------------------------------- reference
def _half_log_snr(abar: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = (log abar - log(1 - abar)) / 2."""
    return 0.5 * (abar.log() - torch.log1p(-abar))


def _dpm_solver_pp(abar_c, abar_p, abar_previous, zero):
    """(prev_x, prev_x0, history1, history2) of DPM-Solver++ of order 1 + len(abar_previous),
    as ``step::dpm_solver_pp``; a step to clean data is first order (x_p = x0)."""
    order = 1 + len(abar_previous)
    alpha_p, sigma_p = abar_p.sqrt(), (1.0 - abar_p).sqrt()
    clean = sigma_p == 0
    lambda_c = _half_log_snr(abar_c)
    h = _half_log_snr(torch.where(clean, torch.full_like(abar_p, 0.5), abar_p)) - lambda_c
    a = -alpha_p * torch.expm1(-h)
    prev_x, prev_x0, history1, history2 = sigma_p / (1.0 - abar_c).sqrt(), a, zero, zero
    if order >= 2:
        lambda_s1 = _half_log_snr(abar_previous[0])
        r0 = (lambda_c - lambda_s1) / h
        if order == 2:
            prev_x0, history1 = a + 0.5 * a / r0, -0.5 * a / r0
        else:
            r1 = (lambda_s1 - _half_log_snr(abar_previous[1])) / h
            c = alpha_p * (torch.expm1(-h) / h + 1.0)
            e = -alpha_p * ((torch.expm1(-h) + h) / (h * h) - 0.5)
            u0, u1, u2 = 1.0 / r0, -(1.0 / r0 + 1.0 / r1), 1.0 / r1
            q, d = r0 / (r0 + r1), e / (r0 + r1)
            prev_x0 = a + c * (1.0 / r0 + q * u0) + d * u0
            history1 = c * (-1.0 / r0 + q * u1) + d * u1
            history2 = c * (q * u2) + d * u2
    return (
        torch.where(clean, zero, prev_x),
        torch.where(clean, alpha_p, prev_x0),
        torch.where(clean, zero, history1),
        torch.where(clean, zero, history2),
    )


def _coefficients(abar_c, abar_p, mode, prediction, variance, eta, recompute_eps, abar_previous):
    """Per-sample float64 coefficients, as ``step::coefficients`` in csrc/scheduler_step/step.h."""
    sc, nc = abar_c.sqrt(), (1.0 - abar_c).sqrt()
    zero, one = torch.zeros_like(sc), torch.ones_like(sc)
    if prediction == PREDICTIONS["epsilon"]:
        x0_x, x0_out, eps_x, eps_out = 1.0 / sc, -nc / sc, zero, one
    elif prediction == PREDICTIONS["sample"]:
        x0_x, x0_out, eps_x, eps_out = zero, one, 1.0 / nc, -sc / nc
    else:
        x0_x, x0_out, eps_x, eps_out = sc, -nc, nc, sc
    can_recompute = (nc > 0) & recompute_eps
    safe_nc = torch.where(nc > 0, nc, one)
    eps_x0_x = torch.where(can_recompute, 1.0 / safe_nc, zero)
    eps_x0_x0 = torch.where(can_recompute, -sc / safe_nc, zero)
    if mode == MODES["ddim"]:
        noisy = (abar_p < 1) & (abar_p > abar_c) & (eta > 0)  # denoising steps only
        ratio = (1.0 - abar_p) / torch.where(abar_c < 1, 1.0 - abar_c, one)
        sigma = torch.where(
            noisy, eta * (ratio * (1.0 - abar_c / abar_p)).clamp_min(0).sqrt(), zero
        )
        direction = 1.0 - abar_p - sigma**2
        prev_x0, prev_eps, prev_x = abar_p.sqrt(), direction.clamp_min(0).sqrt(), zero
    elif mode == MODES["dpmsolver++"]:
        prev_x, prev_x0, history1, history2 = _dpm_solver_pp(abar_c, abar_p, abar_previous, zero)
        return (x0_x, x0_out, eps_x, eps_out, eps_x0_x, eps_x0_x0, prev_x0, zero, prev_x, zero,
                history1, history2)  # fmt: skip
    else:
        alpha = abar_c / abar_p
        beta = 1.0 - alpha
        prev_x0 = abar_p.sqrt() * beta / (1.0 - abar_c)
        prev_eps = zero
        prev_x = alpha.sqrt() * (1.0 - abar_p) / (1.0 - abar_c)
        var = beta * (1.0 - abar_p) / (1.0 - abar_c) if variance == VARIANCES["posterior"] else beta
        sigma = torch.where(abar_p < 1, var.clamp_min(0).sqrt(), zero)
    return (x0_x, x0_out, eps_x, eps_out, eps_x0_x, eps_x0_x0, prev_x0, prev_eps, prev_x, sigma,
            zero, zero)  # fmt: skip


def scheduler_step_ref(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    mode: int,
    prediction: int,
    variance: int,
    eta: float,
    clip: float,
    recompute_eps: bool,
    threshold: torch.Tensor | None,
    noise: torch.Tensor | None,
    rng_state: torch.Tensor | None,
    null_output: torch.Tensor | None,
    guidance_scale: float,
    history: list[torch.Tensor],
    history_timestep: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's reference in PyTorch: same arguments as ``patronus::scheduler_step`` (levels as
    (B,) int64, float64 table, integer enums) and the same order of float operations."""
    others = [("model_output", model_output), ("null_output", null_output)]
    others += [("history", previous) for previous in history]
    for name, other in others:
        if other is not None and (other.shape != sample.shape or other.dtype != sample.dtype):
            raise ValueError(f"{name} must match sample in shape and dtype")
    if len(history) != len(history_timestep) or len(history) > MAX_SOLVER_ORDER - 1:
        raise ValueError("history and history_timestep hold the same number (0-2) of tensors")
    if history and mode != MODES["dpmsolver++"]:
        raise ValueError("previous predictions (history) are for DPM-Solver++ only")
    if (mode == MODES["ddpm"] or eta > 0) and noise is None and rng_state is None:
        raise ValueError("DDPM and DDIM with eta > 0 add noise: pass noise or rng_state")
    steps = alphas_cumprod.shape[0]
    for levels in (timestep, prev_timestep, *history_timestep):
        if ((levels < -1) | (levels >= steps)).any():
            raise ValueError(f"timesteps must lie in [-1, {steps})")
    padded = torch.cat([alphas_cumprod, alphas_cumprod.new_ones(1)])  # index -1 -> 1
    abar_c, abar_p = padded[timestep], padded[prev_timestep]
    abar_previous = [padded[levels] for levels in history_timestep]
    coefficients = _coefficients(
        abar_c, abar_p, mode, prediction, variance, eta, recompute_eps, abar_previous
    )
    opmath = opmath_dtype(sample)
    shape = (-1,) + (1,) * (sample.dim() - 1)
    x0_x, x0_out, eps_x, eps_out, e_x, e_x0, p_x0, p_eps, p_x, sigma, h1, h2 = (
        c.to(opmath).reshape(shape) for c in coefficients
    )
    x = sample.to(opmath)
    out = model_output.to(opmath)
    if null_output is not None:  # guidance: null + w (out - null)
        null = null_output.to(opmath)
        out = null + guidance_scale * (out - null)
    x0 = x0_x * x + x0_out * out
    eps = eps_x * x + eps_out * out
    limit = threshold.to(opmath).reshape(shape) if threshold is not None else None
    if limit is None and clip > 0:
        limit = torch.full_like(x0_x, clip)
    if limit is not None:
        x0 = torch.maximum(torch.minimum(x0, limit), -limit)
        if threshold is not None:
            x0 = x0 / limit
        eps = torch.where(e_x != 0, e_x * x + e_x0 * x0, eps)
    prev = p_x0 * x0 + p_eps * eps + p_x * x
    if bool((coefficients[9] > 0).any()):
        if noise is None:
            assert rng_state is not None  # (for type checkers: checked above)
            seed, offset = (int(v) for v in rng_state.tolist())
            noise = philox_normal(seed, offset, sample.shape, sample.device)
        prev = prev + sigma * torch.where(sigma > 0, noise.to(opmath), 0)
    for weight, previous in zip((h1, h2), history, strict=False):
        prev = prev + weight * previous.to(opmath)
    return prev.to(sample.dtype), x0.to(sample.dtype)


_MASK = 0xFFFFFFFF


def _philox4x32_10(counter: list[torch.Tensor], k0: int, k1: int) -> list[torch.Tensor]:
    """Random123's Philox4x32-10 on int64 tensors holding uint32 values."""
    c0, c1, c2, c3 = counter
    for _ in range(10):
        p0 = c0 * 0xD2511F53  # < 2^64: wraps in int64, its low 64 bits are exact
        p1 = c2 * 0xCD9E8D57
        hi0, lo0 = (p0 >> 32) & _MASK, p0 & _MASK
        hi1, lo1 = (p1 >> 32) & _MASK, p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _MASK
        k1 = (k1 + 0xBB67AE85) & _MASK
    return [c0, c1, c2, c3]


def philox_normal(
    seed: int, offset: int, shape: torch.Size | tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """The in-kernel noise: element i is normal ``i % 4`` of Philox group ``i // 4`` keyed by
    ``seed`` with counter (group, offset), Box-Muller in float64. Returns float64 of ``shape``."""
    numel = math.prod(shape)
    groups = torch.arange((numel + 3) // 4, dtype=torch.long, device=device)
    counter = [
        groups & _MASK,
        (groups >> 32) & _MASK,
        torch.full_like(groups, offset & _MASK),
        torch.full_like(groups, (offset >> 32) & _MASK),
    ]
    r = _philox4x32_10(counter, seed & _MASK, (seed >> 32) & _MASK)
    uniforms = [(v.double() + 0.5) * 2.0**-32 for v in r]
    normals = []
    for u1, u2 in ((uniforms[0], uniforms[1]), (uniforms[2], uniforms[3])):
        radius = (-2.0 * u1.log()).sqrt()
        normals += [radius * torch.cos(2 * math.pi * u2), radius * torch.sin(2 * math.pi * u2)]
    return torch.stack(normals, dim=1).flatten()[:numel].reshape(shape)


# --------------------------------------------------------------------------------- backends
BACKENDS = _backend.OpBackends(
    "scheduler_step",
    {"cpp": _backend.cpp_probe("scheduler_step_fwd"), "torch": _backend.torch_probe},
)


# -------------------------------------------------------------------------------- custom op
def _on_backend(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's body: the arguments of ``scheduler_step_ref``, run on the chosen backend."""
    if BACKENDS.select(args[0].device).name == "cpp":
        return torch.ops.patronus.scheduler_step_fwd(*args)
    return scheduler_step_ref(*args)


# the op takes the reference's arguments (its schema is inferred from the reference's signature)
_scheduler_step_op = torch.library.custom_op(
    "patronus::scheduler_step",
    _on_backend,
    mutates_args=(),
    schema=torch.library.infer_schema(scheduler_step_ref, mutates_args=()),
)


@_scheduler_step_op.register_fake
def _scheduler_step_fake(sample, model_output, *args):
    return torch.empty_like(sample), torch.empty_like(sample)


def _no_context(ctx, inputs, output) -> None:
    return None


def _not_differentiable(ctx, *grads):
    raise RuntimeError(
        "patronus::scheduler_step is not differentiable: samplers run without gradients; "
        "differentiate through scheduler_step_ref if you need to"
    )


_scheduler_step_op.register_autograd(_not_differentiable, setup_context=_no_context)


# ------------------------------------------------------------------------------- public API
def scheduler_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    prev_timestep: int | torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    mode: str = "ddim",
    prediction: str = "epsilon",
    eta: float = 0.0,
    variance: str = "posterior",
    clip: float | None = None,
    threshold: torch.Tensor | None = None,
    recompute_eps: bool = True,
    noise: torch.Tensor | None = None,
    rng_state: torch.Tensor | None = None,
    null_output: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    previous_x0: Sequence[torch.Tensor] = (),
    previous_timestep: Sequence[int | torch.Tensor] = (),
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of DDIM / DDPM / DDIM inversion / DPM-Solver++ for a batch.

    Args:
        sample: x at the current level, (B, ...), fp16/bf16/fp32/fp64.
        model_output: the network's prediction, like ``sample``.
        timestep, prev_timestep: current and target levels, ints or (B,) int64 (per sample);
            -1 is clean data (abar = 1).
        alphas_cumprod: (T,) schedule table; cast to float64 on the sample's device.
        mode: "ddim", "ddpm" or "dpmsolver++" (multistep, data prediction, of order
            1 + len(previous_x0); a step to clean data is always first order);
            prediction: "epsilon", "sample" or "v_prediction";
        eta: DDIM stochasticity; variance: DDPM "posterior" or "beta".
        clip: clamp x0 to [-clip, clip]; threshold: (B,) per-sample dynamic threshold
            (clamp to [-k, k] and divide by k); recompute_eps: re-derive the noise from the
            clipped x0 (the DDIM convention of guided-diffusion; diffusers' default is False).
        noise: N(0, I) like ``sample``, used where the step adds noise; or
        rng_state: int64 [seed, offset] on the sample's device for in-kernel noise.
        null_output: the model's output without conditioning, like ``sample``: the step then
            uses ``null_output + guidance_scale * (model_output - null_output)`` (classifier-free
            guidance), combined in the same pass. Without it ``guidance_scale`` must be 1.
        previous_x0: DPM-Solver++ of order 2 or 3: the x0 predictions (this function's second
            output) of the previous one or two steps, most recent first, each like ``sample``.
        previous_timestep: their levels, ints or (B,) int64, noisier than ``timestep`` and
            each noisier than the one before.
        validate: check the levels' range (and, for DDPM, that each step goes to a cleaner
            level), that thresholds are finite and > 0 and that the table's values lie in
            [0, 1]. This reads tensor values, a host synchronisation on a GPU: the samplers,
            which build valid levels, turn it off.

    Returns:
        (x at the target level, predicted x0 after clipping), both like ``sample``.
    """
    check_float("sample", sample)
    batch = sample.shape[0]
    timestep = _levels(timestep, batch, sample.device, "timestep")
    prev_timestep = _levels(prev_timestep, batch, sample.device, "prev_timestep")
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be finite and > 0 (None: no clipping), got {clip}")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
    if null_output is None and guidance_scale != 1.0:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs null_output (the model's unconditioned "
            "prediction); without it the step would be unguided"
        )
    _check_table(alphas_cumprod)
    history = list(previous_x0)
    if len(history) != len(previous_timestep):
        raise ValueError("previous_x0 and previous_timestep must have the same length")
    if len(history) > MAX_SOLVER_ORDER - 1:
        raise ValueError(f"DPM-Solver++ is of order <= {MAX_SOLVER_ORDER}: at most 2 previous_x0")
    if history and mode != "dpmsolver++":
        raise ValueError(f"previous_x0 is for mode='dpmsolver++' (mode={mode!r} is one-step)")
    history_timestep = [
        _levels(level, batch, sample.device, f"previous_timestep[{i}]")
        for i, level in enumerate(previous_timestep)
    ]
    if validate:
        _check_values(mode, timestep, prev_timestep, alphas_cumprod, threshold, history_timestep)
    table = alphas_cumprod.to(device=sample.device, dtype=torch.float64)
    args = (
        _choice(MODES, mode, "mode"),
        _choice(PREDICTIONS, prediction, "prediction"),
        _choice(VARIANCES, variance, "variance"),
        float(eta),
        float(clip) if clip is not None else 0.0,
        bool(recompute_eps),
        threshold,
        noise,
        rng_state,
        null_output,
        float(guidance_scale),
        history,
        history_timestep,
    )
    operands = (sample, model_output, timestep, prev_timestep, table, *args)
    if torch.compiler.is_compiling() or _tracks_gradients(operands):
        return torch.ops.patronus.scheduler_step(*operands)
    # eager and without gradients (as the samplers call it): the op's body directly, without the
    # custom-op dispatch, which costs more host time than the CPU kernel itself at small sizes
    return _on_backend(*operands)


def _tracks_gradients(operands: tuple) -> bool:
    """Whether autograd would record the step (the op's autograd then raises on backward): any
    tensor operand, in the history lists too, requires grad."""
    if not torch.is_grad_enabled():
        return False
    tensors = [t for o in operands for t in (o if isinstance(o, list) else [o])]
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)
