"""The Triton kernels on a real GPU (skipped without one; `make gpu-check` runs them)."""

import pytest
import torch

from patronus.ops import prototype_distance_map, prototype_min_distance, prototype_min_distance_ref
from patronus.testing import brute_force_distances

pytestmark = pytest.mark.cuda

SHAPES = [(3, 7, 5, 3, 11), (2, 130, 11, 13, 37), (64, 128, 26, 26, 100), (4, 256, 32, 32, 2000)]


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_matches_brute_force_on_gpu(shape, dtype):
    batch, dim, height, width, num = shape
    features = torch.randn(batch, dim, height, width, device="cuda").to(dtype)
    prototypes = torch.rand(num, dim, device="cuda")
    min_dist, index = prototype_min_distance(features, prototypes)
    distances = brute_force_distances(features, prototypes)
    expected = distances.min(2).values
    torch.testing.assert_close(min_dist.double(), expected, atol=1e-3, rtol=1e-4)
    chosen = distances.gather(2, index[..., None])[..., 0]
    # the chosen patch is a minimiser up to the half-precision products' rounding
    torch.testing.assert_close(chosen, expected, atol=0.05 if dtype != torch.float32 else 1e-3,
                               rtol=1e-2 if dtype != torch.float32 else 1e-4)  # fmt: skip


def test_ties_and_layouts_on_gpu():
    prototypes = torch.rand(5, 8, device="cuda")
    features = torch.randn(8, device="cuda")[None, :, None, None].expand(2, 8, 4, 5).contiguous()
    _, index = prototype_min_distance(features, prototypes)
    assert torch.equal(index, torch.zeros_like(index))
    features = torch.randn(3, 16, 7, 9, device="cuda")
    expected = prototype_min_distance(features, prototypes.repeat(1, 2))
    for variant in (features.to(memory_format=torch.channels_last), features.flatten(2).mT):
        got = prototype_min_distance(variant, prototypes.repeat(1, 2))
        torch.testing.assert_close(got[0], expected[0])
        assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize("deterministic", ["1", "0"])
def test_backward_on_gpu(monkeypatch, deterministic):
    monkeypatch.setenv("PATRONUS_DETERMINISTIC", deterministic)
    features = torch.randn(8, 64, 9, 9, device="cuda", requires_grad=True)
    prototypes = torch.rand(50, 64, device="cuda", requires_grad=True)
    weights = torch.randn(8, 50, device="cuda")
    (prototype_min_distance(features, prototypes)[0] * weights).sum().backward()
    f = features.detach().double().requires_grad_()
    p = prototypes.detach().double().requires_grad_()
    (prototype_min_distance_ref(f, p)[0] * weights.double()).sum().backward()
    torch.testing.assert_close(features.grad.double(), f.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(prototypes.grad.double(), p.grad, atol=1e-3, rtol=1e-4)


def test_deterministic_backward_is_bit_reproducible_on_gpu():
    features = torch.randn(16, 64, 8, 8, device="cuda")
    features[:, :, 0, 0] = features[:, :, 3, 3]
    prototypes = torch.rand(100, 64, device="cuda")

    def gradients():
        f, p = features.clone().requires_grad_(), prototypes.clone().requires_grad_()
        prototype_min_distance(f, p)[0].sum().backward()
        return f.grad, p.grad

    first, second = gradients(), gradients()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_distance_map_on_gpu():
    features = torch.randn(2, 33, 7, 5, device="cuda")
    prototypes = torch.rand(19, 33, device="cuda")
    expected = brute_force_distances(features, prototypes).reshape(2, 19, 7, 5)
    torch.testing.assert_close(
        prototype_distance_map(features, prototypes).double(), expected, atol=1e-3, rtol=1e-4
    )


def test_compile_and_cuda_graph_on_gpu():
    torch._dynamo.reset()
    features = torch.randn(4, 32, 6, 6, device="cuda")
    prototypes = torch.rand(10, 32, device="cuda")
    compiled = torch.compile(lambda f, p: prototype_min_distance(f, p)[0] * 2, fullgraph=True)
    torch.testing.assert_close(compiled(features, prototypes),
                               2 * prototype_min_distance(features, prototypes)[0])  # fmt: skip
    static_out = prototype_min_distance(features, prototypes)[0]  # warm-up (autotuning)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = prototype_min_distance(features, prototypes)[0]
    features.copy_(torch.randn_like(features))
    graph.replay()
    torch.testing.assert_close(static_out, prototype_min_distance(features, prototypes)[0])
