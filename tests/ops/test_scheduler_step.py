"""The op patronus::scheduler_step (the fused step) on every backend and device against float64
equations. Inputs are drawn on the CPU (seeded) and moved to the device under test."""

import zlib

import numpy as np
import pytest
import torch
from scipy import stats

from patronus import _backend
from patronus.diffusion import NoiseSchedule
from patronus.ops.scheduler import (
    MODES,
    PREDICTIONS,
    VARIANCES,
    _philox4x32_10,
    philox_normal,
    scheduler_step,
    scheduler_step_ref,
)
from patronus.testing import STEP_TOLERANCES

TABLE = NoiseSchedule.from_name("linear", 1000).alphas_cumprod
ABAR = np.concatenate([TABLE.numpy(), [1.0]])  # index -1 -> 1
BACKENDS = {"cpu": ["cpp", "torch"], "cuda": ["cpp", "torch"]}


def reference64(x, out, noise, c, p, mode, prediction, eta, variance, clip, threshold, recompute):
    """The update equations in float64 numpy, written out per sample."""
    x, out = x.astype(np.float64), out.astype(np.float64)
    prev, x0s = np.empty_like(x), np.empty_like(x)
    for b in range(x.shape[0]):
        ac, ap = ABAR[c[b]], ABAR[p[b]]
        if prediction == "epsilon":
            x0 = (x[b] - np.sqrt(1 - ac) * out[b]) / np.sqrt(ac)
            eps = out[b]
        elif prediction == "sample":
            x0 = out[b]
            eps = (x[b] - np.sqrt(ac) * x0) / np.sqrt(1 - ac)
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            x0 = np.sqrt(ac) * x[b] - np.sqrt(1 - ac) * out[b]
            eps = np.sqrt(1 - ac) * x[b] + np.sqrt(ac) * out[b]
        limit = threshold[b] if threshold is not None else clip
        if limit:
            x0 = np.clip(x0, -limit, limit)
            if threshold is not None:
                x0 = x0 / limit
            if recompute and ac < 1:
                eps = (x[b] - np.sqrt(ac) * x0) / np.sqrt(1 - ac)
        if mode == "ddim":
            sigma = 0.0
            if eta > 0 and ap < 1 and ap > ac:  # the inversion (towards noise) is deterministic
                sigma = eta * np.sqrt((1 - ap) / (1 - ac) * (1 - ac / ap))
            prev[b] = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * eps + sigma * noise[b]
        else:
            alpha, beta = ac / ap, 1 - ac / ap
            mean = np.sqrt(ap) * beta / (1 - ac) * x0 + np.sqrt(alpha) * (1 - ap) / (1 - ac) * x[b]
            var = beta * (1 - ap) / (1 - ac) if variance == "posterior" else beta
            prev[b] = mean + (np.sqrt(var) * noise[b] if ap < 1 else 0)
        x0s[b] = x0
    return prev, x0s


def random_levels(mode, batch, generator):
    c = torch.randint(0, 1000, (batch,), generator=generator, device="cpu")
    if mode == "ddim":  # any earlier level, clean data included, and some inversion steps
        p = (c - torch.randint(1, 60, (batch,), generator=generator, device="cpu")).clamp_min(-1)
        p[0] = min(int(c[0]) + 20, 999)  # an inversion step (towards noise)
        c[1], p[1] = -1, 0  # the inversion's first step, from clean data
    else:
        p = c - 1
    return c, p


def on_device(backend, step):
    """``step`` with its tensor arguments moved to the backend's device, results moved back."""

    def moved(*args, **kwargs):
        def move(value):
            return value.to(backend.device) if isinstance(value, torch.Tensor) else value

        args = [move(a) for a in args]
        results = step(*args, **{k: move(v) for k, v in kwargs.items()})
        return tuple(r.cpu() for r in results)

    return moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_step_matches_float64_equations(backend, dtype, mode, prediction):
    # a fixed seed per case (hash() of strings changes with every process)
    generator = torch.Generator().manual_seed(zlib.crc32(f"{mode} {prediction} {dtype}".encode()))
    batch = 6
    x, out, noise = (
        torch.randn(batch, 3, 5, 7, generator=generator, device="cpu").to(dtype) for _ in range(3)
    )
    c, p = random_levels(mode, batch, generator)
    if prediction != "epsilon":  # sample/v predictions need a noisy current level
        c = c.clamp_min(0)
        p = torch.where(p == c, p - 1, p)
    eta = 0.8 if mode == "ddim" else 0.0
    dynamic = torch.rand(batch, generator=generator, device="cpu") + 1
    for clip, threshold, recompute in [
        (None, None, True), (1.0, None, True), (1.0, None, False), (None, dynamic, True),
    ]:  # fmt: skip
        prev, x0 = on_device(backend, scheduler_step)(
            x, out, c, p, TABLE, mode=mode, prediction=prediction, eta=eta, clip=clip,
            threshold=threshold, recompute_eps=recompute, noise=noise,
        )  # fmt: skip
        assert prev.dtype == dtype and x0.dtype == dtype
        expected_prev, expected_x0 = reference64(
            x.double().numpy(), out.double().numpy(), noise.double().numpy(), c.numpy(),
            p.numpy(), mode, prediction, eta, "posterior", clip,
            None if threshold is None else threshold.numpy(), recompute,
        )  # fmt: skip
        tolerance = STEP_TOLERANCES[dtype]
        scale = 1 + np.abs(expected_prev)
        assert np.max(np.abs(prev.double().numpy() - expected_prev) / scale) < tolerance
        assert (
            np.max(np.abs(x0.double().numpy() - expected_x0) / (1 + np.abs(expected_x0)))
            < tolerance
        )


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_variances(backend, variance):
    x, out, noise = (torch.randn(3, 2, 4, dtype=torch.float64, device="cpu") for _ in range(3))
    c = torch.tensor([500, 10, 0], device="cpu")
    prev, _ = on_device(backend, scheduler_step)(
        x, out, c, c - 1, TABLE, mode="ddpm", variance=variance, noise=noise
    )
    expected, _ = reference64(x.numpy(), out.numpy(), noise.numpy(), c.numpy(), (c - 1).numpy(),
                              "ddpm", "epsilon", 0.0, variance, None, None, True)  # fmt: skip
    np.testing.assert_allclose(prev.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("guided", [False, True])
def test_kernel_and_reference_agree_bit_for_bit(guided):
    if _backend.load_extension()[0] is None:
        pytest.skip("patronus._C is not built (PATRONUS_BUILD_EXT=0)")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 9, 9, generator=generator)
    out = torch.randn(8, 3, 9, 9, generator=generator)
    null = torch.randn(8, 3, 9, 9, generator=generator) if guided else None
    c, p = random_levels("ddim", 8, generator)
    rng = torch.tensor([12345, 17])
    args = (x, out, c, p, TABLE.double(), MODES["ddim"], PREDICTIONS["epsilon"],
            VARIANCES["posterior"], 0.5, 1.0, True, None, None, rng, null, 2.5, [], [])  # fmt: skip
    fused = torch.ops.patronus.scheduler_step_fwd(*args)
    reference = scheduler_step_ref(*args)
    for a, b in zip(fused, reference, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5, -0.5])
def test_guidance_matches_float64_equations(backend, dtype, scale):
    """The step with null_output uses null + w (out - null); w = 0 is the null-conditioned step
    exactly (bit for bit), and without null_output a scale other than 1 is refused."""
    generator = torch.Generator().manual_seed(7)
    x, out, null, noise = (
        torch.randn(5, 2, 6, 7, generator=generator, device="cpu").to(dtype) for _ in range(4)
    )
    c, p = random_levels("ddim", 5, generator)
    step = on_device(backend, scheduler_step)
    kwargs = dict(eta=0.6, clip=1.0, noise=noise)
    prev, x0 = step(x, out, c, p, TABLE, null_output=null, guidance_scale=scale, **kwargs)
    combined = null.double() + scale * (out.double() - null.double())
    expected_prev, expected_x0 = reference64(
        x.double().numpy(), combined.numpy(), noise.double().numpy(), c.numpy(), p.numpy(),
        "ddim", "epsilon", 0.6, "posterior", 1.0, None, True,
    )  # fmt: skip
    tolerance = STEP_TOLERANCES[dtype] * (1 + abs(scale))
    assert np.max(np.abs(prev.double().numpy() - expected_prev) / (1 + np.abs(expected_prev))) < (
        tolerance
    )
    assert np.max(np.abs(x0.double().numpy() - expected_x0) / (1 + np.abs(expected_x0))) < (
        tolerance
    )
    if scale == 0.0:
        for a, b in zip((prev, x0), step(x, null, c, p, TABLE, **kwargs), strict=True):
            assert torch.equal(a, b)
    if scale == 1.0:
        unguided = step(x, out, c, p, TABLE, guidance_scale=scale, **kwargs)
        for a, b in zip(unguided, step(x, out, c, p, TABLE, **kwargs), strict=True):
            assert torch.equal(a, b)
    else:  # a scale without the null prediction would silently be an unguided step
        with pytest.raises(ValueError, match="needs null_output"):
            step(x, out, c, p, TABLE, guidance_scale=scale, **kwargs)


def test_in_kernel_noise_is_reproducible_and_standard_normal(backend):
    """x = 0 and a zero noise prediction at t = 1 -> 0 (DDPM): the step returns sigma * z."""
    shape = (16, 3, 64, 64)
    zeros = torch.zeros(shape)
    c = torch.ones(16, dtype=torch.long)

    def draw(seed, offset):
        rng = torch.tensor([seed, offset])
        prev, _ = scheduler_step(zeros, zeros, c, c - 1, TABLE, mode="ddpm", rng_state=rng)
        return prev

    beta = 1 - TABLE[1] / TABLE[0]  # from level 1 to level 0
    sigma = float((beta * (1 - TABLE[0]) / (1 - TABLE[1])).sqrt())
    z = draw(2024, 3) / sigma
    assert torch.equal(draw(2024, 3), z * sigma)
    assert not torch.equal(draw(2024, 4), z * sigma) and not torch.equal(draw(7, 3), z * sigma)
    expected = philox_normal(2024, 3, shape, "cpu")
    torch.testing.assert_close(z.double().cpu(), expected, rtol=0, atol=1e-5)
    values = z.flatten().double().cpu().numpy()
    assert abs(values.mean()) < 4 / np.sqrt(values.size)
    assert abs(values.std() - 1) < 4 / np.sqrt(2 * values.size)
    assert abs(stats.skew(values)) < 0.02 and abs(stats.kurtosis(values)) < 0.04
    assert stats.kstest(values, "norm").pvalue > 1e-3
    # neighbouring offsets (consecutive steps) are independent
    other = (draw(2024, 4) / sigma).flatten().double().cpu().numpy()
    assert abs(np.corrcoef(values, other)[0, 1]) < 4 / np.sqrt(values.size)


# Random123's known answers for philox4x32 with 10 rounds (its kat_vectors file):
# counter c0..c3, key k0 k1 -> the four outputs
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_is_random123s(counter, key, expected):
    """The reference generator the kernels' noise is checked against is Random123's Philox."""
    outputs = _philox4x32_10([torch.tensor([value]) for value in counter], *key)
    assert [int(value) for value in outputs] == list(expected)


def test_errors(backend):
    x = torch.randn(2, 3)
    c = torch.tensor([5, 5])
    with pytest.raises((ValueError, RuntimeError), match="pass noise or rng_state"):
        scheduler_step(x, x, c, c - 1, TABLE, mode="ddpm")
    with pytest.raises((ValueError, RuntimeError), match="must match sample"):
        scheduler_step(x, x[:, :2], c, c - 1, TABLE)
    with pytest.raises((ValueError, RuntimeError), match=r"\[-1, 1000\)"):
        scheduler_step(x, x, torch.tensor([1000, 5]), c - 1, TABLE)
    with pytest.raises(ValueError, match="mode must be one of"):
        scheduler_step(x, x, c, c - 1, TABLE, mode="euler")


def test_scheduler_step_is_the_op_the_readme_names():
    import patronus.ops

    assert patronus.ops.scheduler_step is scheduler_step and callable(patronus.ops.scheduler_step)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"threshold": torch.tensor([2.0, 0.0])}, ValueError, "threshold values"),
        ({"threshold": torch.tensor([-1.0, 2.0])}, ValueError, "threshold values"),
        ({"threshold": torch.tensor([float("nan"), 2.0])}, ValueError, "threshold values"),
        ({"clip": 0.0}, ValueError, "clip must be finite and > 0"),
        ({"clip": -1.0}, ValueError, "clip must be finite and > 0"),
        ({"eta": float("nan")}, ValueError, "eta must be"),
        ({"timestep": 5.5}, TypeError, "timestep must be an int"),
        ({"timestep": torch.tensor([5.0, 5.0])}, TypeError, "integer levels"),
        ({"prev_timestep": torch.tensor([1, 2, 3])}, ValueError, r"\(B,\)"),
        ({"mode": "ddpm", "timestep": -1, "prev_timestep": -1}, ValueError, "cleaner one"),
        ({"mode": "ddpm", "timestep": 3, "prev_timestep": 7}, ValueError, "cleaner one"),
        ({"guidance_scale": 2.0}, ValueError, "needs null_output"),
        ({"table": TABLE[None]}, ValueError, r"\(T,\) schedule table, got shape \(1, 1000\)"),
        ({"table": TABLE[:0]}, ValueError, r"\(T,\) schedule table"),
        ({"table": (TABLE * 1000).long()}, TypeError, "floating-point"),
        ({"table": TABLE + 0.5}, ValueError, r"lie in \[0, 1\]"),
        (
            {"table": torch.cat([TABLE[:-1], TABLE.new_full((1,), float("nan"))])},
            ValueError,
            r"lie in \[0, 1\]",
        ),
    ],
)
def test_invalid_arguments_are_refused_on_every_backend(backend, change, error, match):
    x = torch.randn(2, 3)
    args = {"timestep": 5, "prev_timestep": 4, "noise": torch.randn(2, 3), **change}
    timestep, prev = args.pop("timestep"), args.pop("prev_timestep")
    table = args.pop("table", TABLE)
    with pytest.raises(error, match=match):
        scheduler_step(x, x, timestep, prev, table, **args)


def test_opcheck(backend):
    x = torch.randn(4, 2, 3, 3)
    c = torch.tensor([900, 500, 20, 0])
    rng = torch.tensor([1, 2])
    table = TABLE.to(x.device, torch.float64)
    for mode, eta in ((0, 0.0), (0, 1.0), (1, 0.0)):
        torch.library.opcheck(
            torch.ops.patronus.scheduler_step.default,
            (x, torch.randn_like(x), c, c - 1, table, mode, 0, 0, eta, 1.0, True, None, None, rng,
             None, 1.0, [], []),
        )  # fmt: skip
    null = torch.randn_like(x)
    torch.library.opcheck(
        torch.ops.patronus.scheduler_step.default,
        (x, torch.randn_like(x), c, c - 1, table, 0, 0, 0, 0.0, 0.0, True, None, None, None, null,
         3.0, [], []),
    )  # fmt: skip


def test_step_is_not_differentiable(backend):
    x = torch.randn(2, 3, requires_grad=True)
    c = torch.tensor([5, 5])
    prev, _ = torch.ops.patronus.scheduler_step(
        x, x, c, c - 1, TABLE.to(x.device, torch.float64), 0, 0, 0, 0.0, 0.0, True, None, None,
        None, None, 1.0, [], [],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="not differentiable"):
        prev.sum().backward()


def test_public_step_with_gradients_still_refuses_backward(backend):
    """Eager calls without gradients skip the custom-op dispatch; with gradients they keep it, so
    backward still raises (instead of silently returning no gradient)."""
    x = torch.randn(2, 3, requires_grad=True)
    prev, _ = scheduler_step(x, x, 5, 4, TABLE, validate=False)
    with pytest.raises(RuntimeError, match="not differentiable"):
        prev.sum().backward()


@pytest.mark.parametrize("grad", [False, True])
def test_public_step_equals_the_op_with_and_without_gradients(backend, grad):
    generator = torch.Generator().manual_seed(11)
    x, out, null = (torch.randn(4, 2, 3, 5, generator=generator, device="cpu") for _ in range(3))
    x, out, null = (t.to(backend.device) for t in (x, out, null))
    c, p = torch.tensor([900, 400, 20, 0]), torch.tensor([880, 380, 0, -1])
    table = TABLE.to(backend.device, torch.float64)
    with torch.set_grad_enabled(grad):
        got = scheduler_step(
            x, out, c, p, table, eta=0.3, clip=1.0, rng_state=torch.tensor([3, 1]),
            null_output=null, guidance_scale=2.0, validate=False,
        )  # fmt: skip
    want = torch.ops.patronus.scheduler_step(
        x, out, c.to(backend.device), p.to(backend.device), table, 0, 0, 0, 0.3, 1.0, True, None,
        None, torch.tensor([3, 1]), null, 2.0, [], [],
    )  # fmt: skip
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    torch._dynamo.reset()
    x, out = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    c, rng = torch.tensor([700, 300, 0]), torch.tensor([5, 0])

    def step(x, out, c, rng):
        return scheduler_step(x, out, c, c - 1, TABLE, mode="ddpm", rng_state=rng, validate=False)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, out, c, rng), step(x, out, c, rng), strict=True):
        assert torch.equal(got, want)


@pytest.mark.cuda
def test_cuda_kernel_matches_cpu():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(8, 3, 17, 9).to(dtype)  # odd sizes: the unvectorised path
        out = torch.randn_like(x)
        c = torch.randint(1, 1000, (8,))
        rng = torch.tensor([99, 4])
        for shape_x in (x, x[:, :, :16, :8].contiguous()):  # and the vectorised one
            o = out[:, :, : shape_x.shape[2], : shape_x.shape[3]].contiguous()
            kw = dict(mode="ddpm", clip=1.0)
            cpu = scheduler_step(shape_x, o, c, c - 1, TABLE, rng_state=rng, **kw)
            gpu = scheduler_step(shape_x.cuda(), o.cuda(), c.cuda(), c.cuda() - 1, TABLE,
                                 rng_state=rng.cuda(), **kw)  # fmt: skip
            for a, b in zip(cpu, gpu, strict=True):
                torch.testing.assert_close(b.cpu().float(), a.float(),
                                           atol=1e-5 if dtype == torch.float32 else 1e-2,
                                           rtol=1e-3)  # fmt: skip
