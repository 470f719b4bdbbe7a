"""The op patronus::q_sample on every backend and device against float64."""

import pytest
import torch

from patronus import _backend
from patronus.ops import backend_choices, q_sample, q_sample_ref
from patronus.testing import tolerance

BACKENDS = {"cpu": ["cpp", "torch"], "cuda": ["torch"]}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def inputs(dtype, shape=(5, 3, 7, 9), requires_grad=False):
    x0 = torch.randn(shape).to(dtype).requires_grad_(requires_grad)
    noise = torch.randn(shape).to(dtype).requires_grad_(requires_grad)
    abar = torch.rand(shape[0], dtype=torch.float64)
    signal, sigma = abar.sqrt(), (1 - abar).sqrt()
    return x0, noise, signal.requires_grad_(requires_grad), sigma.requires_grad_(requires_grad)


def float64_oracle(x0, noise, signal, sigma):
    shape = (-1,) + (1,) * (x0.dim() - 1)
    return signal.double().reshape(shape) * x0.double() + sigma.double().reshape(shape) * noise


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64(backend, dtype):
    assert backend_choices(torch.device(backend.device))["q_sample"].name == backend.name
    x0, noise, a, s = inputs(dtype)
    result = q_sample(x0, noise, a, s)
    assert result.dtype == dtype and result.device.type == backend.device
    torch.testing.assert_close(result.double(), float64_oracle(x0, noise.double(), a, s),
                               **tolerance(dtype))  # fmt: skip


def test_non_contiguous_and_empty(backend):
    x0, noise, a, s = inputs(torch.float32, (4, 6, 5, 5))
    x0, noise = x0.transpose(2, 3), noise.transpose(2, 3)
    torch.testing.assert_close(q_sample(x0, noise, a, s), q_sample_ref(x0, noise, a, s))
    empty = q_sample(torch.empty(0, 3), torch.empty(0, 3), a[:0], s[:0])
    assert empty.shape == (0, 3)


def test_one_dimensional_data(backend):
    x0, noise, a, s = inputs(torch.float32, (6,))
    torch.testing.assert_close(q_sample(x0, noise, a, s), (a * x0 + s * noise).float())


def test_gradients_on_every_input(backend):
    """The gradient is the same formula on every backend (it used to exist on the reference only,
    and inputs needing one silently left the fast kernel)."""
    x0, noise, a, s = inputs(torch.float32, requires_grad=True)
    weights = torch.randn(x0.shape)
    grads = torch.autograd.grad((q_sample(x0, noise, a, s) * weights).sum(), (x0, noise, a, s))
    leaves = [t.detach().double().requires_grad_() for t in (x0, noise, a, s)]
    expected = torch.autograd.grad((float64_oracle(*leaves) * weights.double()).sum(), leaves)
    for got, want, leaf in zip(grads, expected, (x0, noise, a, s), strict=True):
        assert got.dtype == leaf.dtype
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_gradcheck_and_gradgradcheck(backend):
    args = inputs(torch.float64, (3, 2, 4), requires_grad=True)
    assert torch.autograd.gradcheck(q_sample, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(q_sample, args)


def test_opcheck(backend):
    for requires_grad in (False, True):
        torch.library.opcheck(torch.ops.patronus.q_sample.default,
                              inputs(torch.float32, requires_grad=requires_grad))  # fmt: skip


def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x0, noise, a, s = inputs(torch.float32)
    compiled = torch.compile(lambda *args: q_sample(*args) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x0, noise, a, s), 2 * q_sample_ref(x0, noise, a, s))


def test_validation():
    x0, noise, a, s = inputs(torch.float32)
    with pytest.raises(ValueError, match="noise must match"):
        q_sample(x0, noise[:, :1], a, s)
    with pytest.raises(ValueError, match=r"signal_scale must be \(B,\)"):
        q_sample(x0, noise, a[:3], s)
    with pytest.raises(TypeError, match="noise_scale must be float"):
        q_sample(x0, noise, a, torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch dimension"):
        q_sample(x0[0, 0, 0, 0], noise[0, 0, 0, 0], a[:1], s[:1])


def test_cpp_kernel_checks_are_errors_not_crashes():
    if _backend.load_extension()[0] is None:
        pytest.skip("patronus._C is not built (PATRONUS_BUILD_EXT=0)")
    x0, noise, a, s = inputs(torch.float32)
    with pytest.raises(RuntimeError, match="scales must be"):
        torch.ops.patronus.q_sample_fwd(x0, noise, a[:2], s)


def test_forced_backends(monkeypatch):
    x0, noise, a, s = inputs(torch.float32)
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")  # q_sample has none: its usual choice
    choice = backend_choices(torch.device("cpu"))["q_sample"]
    assert choice.reason.startswith("triton: not implemented for this op")
    torch.testing.assert_close(q_sample(x0, noise, a, s), q_sample_ref(x0, noise, a, s))
    monkeypatch.setenv("PATRONUS_BACKEND", "cpp")
    with pytest.raises(_backend.BackendUnavailableError, match="cpp"):
        backend_choices(torch.device("meta"))
