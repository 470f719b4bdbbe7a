"""The compiled extension patronus._C: its q_sample op against the reference, and the fallback."""

import os
import subprocess
import sys

import pytest
import torch

from patronus import _backend
from patronus.ops import q_sample, q_sample_ref
from patronus.testing import tolerance

BUILT = os.environ.get("PATRONUS_BUILD_EXT", "1") != "0"


def test_extension_is_built_unless_disabled():
    module, status = _backend.load_extension()
    if BUILT:
        assert module is not None, f"patronus._C should be built here: {status}"
    else:
        assert module is None and "PATRONUS_BUILD_EXT=0" in status


needs_extension = pytest.mark.skipif(not BUILT, reason="PATRONUS_BUILD_EXT=0: no extension")


def inputs(dtype, shape=(5, 3, 7, 9)):
    x0 = torch.randn(shape).to(dtype)
    noise = torch.randn(shape).to(dtype)
    abar = torch.rand(shape[0], dtype=torch.float64)
    return x0, noise, abar.sqrt(), (1 - abar).sqrt()


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cpp_q_sample_matches_float64(dtype):
    x0, noise, a, s = inputs(dtype)
    assert (
        _backend.select("q_sample", x0.device, {"cpp": _backend.cpp_probe("q_sample")}).name
        == "cpp"
    )
    result = torch.ops.patronus.q_sample(x0, noise, a, s)
    expected = a.reshape(-1, 1, 1, 1) * x0.double() + s.reshape(-1, 1, 1, 1) * noise.double()
    assert result.dtype == dtype
    torch.testing.assert_close(result.double(), expected, **tolerance(dtype))
    torch.testing.assert_close(
        q_sample(x0, noise, a, s), q_sample_ref(x0, noise, a, s), **tolerance(dtype)
    )


@needs_extension
def test_cpp_q_sample_non_contiguous_and_empty():
    x0, noise, a, s = inputs(torch.float32, (4, 6, 5, 5))
    x0 = x0.transpose(2, 3)
    noise = noise.transpose(2, 3)
    torch.testing.assert_close(
        torch.ops.patronus.q_sample(x0, noise, a, s), q_sample_ref(x0, noise, a, s)
    )
    empty = torch.ops.patronus.q_sample(torch.empty(0, 3), torch.empty(0, 3), a[:0], s[:0])
    assert empty.shape == (0, 3)


@needs_extension
def test_opcheck():
    x0, noise, a, s = inputs(torch.float32)
    torch.library.opcheck(torch.ops.patronus.q_sample.default, (x0, noise, a, s))


@needs_extension
def test_cpp_checks_are_errors_not_crashes():
    x0, noise, a, s = inputs(torch.float32)
    with pytest.raises(RuntimeError, match="scales must be"):
        torch.ops.patronus.q_sample(x0, noise, a[:2], s)


def test_q_sample_validation():
    x0, noise, a, s = inputs(torch.float32)
    with pytest.raises(ValueError, match="noise must match"):
        q_sample(x0, noise[:, :1], a, s)
    with pytest.raises(ValueError, match=r"signal_scale must be \(B,\)"):
        q_sample(x0, noise, a[:3], s)


def test_forced_backends(monkeypatch):
    x0, noise, a, s = inputs(torch.float32)
    monkeypatch.setenv("PATRONUS_BACKEND", "torch")
    torch.testing.assert_close(q_sample(x0, noise, a, s), q_sample_ref(x0, noise, a, s))
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")  # q_sample has none: its usual choice
    assert backend_of_q_sample().reason.startswith("triton: not implemented for this op")
    torch.testing.assert_close(q_sample(x0, noise, a, s), q_sample_ref(x0, noise, a, s))
    with pytest.raises(_backend.BackendUnavailableError, match="cpp"):
        _backend.select("q_sample", torch.device("meta"), {"cpp": _backend.cpp_probe("q_sample")})


def backend_of_q_sample():
    from patronus.ops.noising import backend

    return backend(torch.device("cpu"))


def test_requires_grad_inputs_use_the_differentiable_reference():
    x0, noise, a, s = inputs(torch.float64)
    x0.requires_grad_()
    q_sample(x0, noise, a, s).sum().backward()
    torch.testing.assert_close(x0.grad, a.reshape(-1, 1, 1, 1).expand_as(x0))


def test_without_extension_everything_runs_on_torch():
    """PATRONUS_BUILD_EXT=0 at run time: the package works and info() says why."""
    code = (
        "import torch, patronus\n"
        "from patronus.ops import q_sample\n"
        "x = torch.randn(2, 3)\n"
        "q_sample(x, x, torch.ones(2), torch.zeros(2))\n"
        "print(patronus.info())\n"
    )
    env = {**os.environ, "PATRONUS_BUILD_EXT": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "disabled by PATRONUS_BUILD_EXT=0" in out.stdout
    assert "q_sample                 torch" in out.stdout
