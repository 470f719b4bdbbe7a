"""The prototype ops (patronus::prototype_min_distance, its backward, and
patronus::prototype_distance_map) on every backend and device against a float64 brute force.

On CPU, ``triton`` runs the Triton kernels under the interpreter, ``cpp`` the extension's kernels,
``torch`` the references; the distance map has no ``cpp`` backend.
"""

import zlib

import pytest
import torch

from patronus import _backend
from patronus.ops import (
    prototype_distance_map,
    prototype_distance_map_ref,
    prototype_min_distance,
    prototype_min_distance_ref,
)
from patronus.testing import brute_force_distances, tolerance

BACKENDS = {"cpu": ["torch", "cpp", "triton"], "cuda": ["torch", "triton"]}
MAP_BACKENDS = ("torch", "triton")
SHAPES = [  # (B, D, H, W, P), deliberately odd
    (3, 7, 5, 3, 11),
    (2, 1, 4, 4, 3),  # D = 1
    (4, 13, 1, 1, 5),  # H = W = 1
    (1, 9, 6, 7, 1),  # P = 1
    (2, 130, 11, 13, 37),  # D and N beyond one block
    (5, 128, 10, 10, 30),  # the Fashion-MNIST paper shape
    (45, 6, 7, 7, 70),  # CPU: 20 batch elements per GEMM (last group 5), 3 prototype tiles
    (9, 5, 40, 30, 140),  # CPU: one element per GEMM, 2 prototype tiles of 70
]
HALF = (torch.float16, torch.bfloat16)
NEAR_TIE_RTOL = 1e-5  # float32 distances of O(100) from sums of O(100) terms: gaps below this tie


def oracle(features, prototypes):
    distances = brute_force_distances(features, prototypes)  # (B, P, N)
    values, index = distances.min(dim=2)
    return values, index, distances


def assert_min_matches(min_dist, index, features, prototypes, exact_index):
    expected, expected_index, distances = oracle(features, prototypes)
    torch.testing.assert_close(min_dist.double(), expected, **tolerance(torch.float32))
    # the chosen patch is a minimiser (up to the rounding of half-precision products)
    chosen = distances.gather(2, index[..., None])[..., 0]
    torch.testing.assert_close(chosen, expected, **tolerance(torch.float32))
    if exact_index:  # the brute force's patch, except where another is within float32 rounding
        # of it (kernels pick from float32 distances; exact ties: test_ties_take_the_smallest_index)
        differs = index != expected_index
        gap = (chosen - expected)[differs].abs()
        assert bool((gap <= NEAR_TIE_RTOL * expected[differs].abs()).all()), gap.max()
        assert differs.float().mean() < 0.01, f"{int(differs.sum())} of {differs.numel()} differ"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_min_distance_matches_brute_force(backend, shape, dtype):
    batch, dim, height, width, num = shape
    features = torch.randn(batch, dim, height, width).to(dtype)
    prototypes = torch.rand(num, dim).to(dtype)
    min_dist, index = prototype_min_distance(features, prototypes)
    assert min_dist.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert index.dtype == torch.int64 and index.shape == (batch, num)
    # winning distances are exact for the (rounded) inputs, whatever the backend's products
    assert_min_matches(min_dist, index, features, prototypes, exact_index=dtype not in HALF)


def test_mixed_dtypes_as_under_autocast(backend):
    features = torch.randn(3, 16, 5, 5).to(torch.bfloat16)
    prototypes = torch.rand(7, 16)  # fp32 parameters
    min_dist, index = prototype_min_distance(features, prototypes)
    assert min_dist.dtype == torch.float32
    assert_min_matches(min_dist, index, features, prototypes, exact_index=False)


def test_layouts_without_copies(backend):
    features = torch.randn(3, 6, 5, 7)
    prototypes = torch.rand(4, 6)
    expected, expected_index, _ = oracle(features, prototypes)
    patches = features.flatten(2).transpose(1, 2).contiguous()  # (B, N, D)
    variants = [
        features.to(memory_format=torch.channels_last),
        patches,
        torch.randn(3, 6, 5, 14)[..., ::2].copy_(features),  # strided view
        features.transpose(2, 3).contiguous().transpose(2, 3),  # non-contiguous H/W
    ]
    for variant in variants:
        min_dist, index = prototype_min_distance(variant, prototypes)
        torch.testing.assert_close(min_dist.double(), expected, **tolerance(torch.float32))
        assert torch.equal(index, expected_index)


def test_results_do_not_depend_on_the_thread_count(backend):
    generator = torch.Generator(torch.get_default_device()).manual_seed(5)
    features = torch.randn(45, 6, 7, 7, generator=generator)
    prototypes = torch.randn(70, 6, generator=generator)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(prototype_min_distance(features, prototypes))
    finally:
        torch.set_num_threads(threads)
    for values, index in results[1:]:
        assert torch.equal(values, results[0][0]) and torch.equal(index, results[0][1])


def test_ties_take_the_smallest_index(backend):
    prototypes = torch.rand(5, 8)
    same = torch.randn(8)
    features = same[None, :, None, None].expand(2, 8, 4, 5).contiguous()
    _, index = prototype_min_distance(features, prototypes)
    assert torch.equal(index, torch.zeros_like(index))
    # copy each prototype's winning patch to a later position: the first copy stays the winner
    for seed in range(4):
        generator = torch.Generator(torch.get_default_device()).manual_seed(seed)
        check_duplicated_winners(generator, prototypes)


def check_duplicated_winners(generator, prototypes):
    features = torch.randn(1, 8, 6, 6, generator=generator)
    _, first = prototype_min_distance(features, prototypes)
    for p in range(prototypes.shape[0]):
        flat = features.flatten(2).clone()
        later = 35 if first[0, p] != 35 else 0
        flat[0, :, later] = flat[0, :, first[0, p]]
        _, again = prototype_min_distance(flat.reshape(1, 8, 6, 6), prototypes)
        assert again[0, p] == min(first[0, p].item(), later)


def test_near_zero_distances_do_not_cancel(backend):
    """A patch within 1e-3 of a large-norm prototype: the exact recomputation keeps ~1e-6."""
    prototypes = torch.full((1, 64), 100.0)
    features = torch.full((1, 64, 2, 2), 50.0)
    features[0, :, 1, 0] = 100.0 + 1e-3 * torch.linspace(-1, 1, 64)
    min_dist, index = prototype_min_distance(features, prototypes)
    expected = (features[0, :, 1, 0].double() - 100.0).square().sum()
    assert index.item() == 2
    torch.testing.assert_close(min_dist[0, 0].double(), expected, rtol=1e-3, atol=0)
    # the norm-expansion form alone loses it at this magnitude (error >= the value itself)
    naive = features[0, :, 1, 0].square().sum() - 2 * 100 * features[0, :, 1, 0].sum() + 64e4
    assert abs(naive.item() - expected.item()) >= expected.item()


def test_empty_batch(backend):
    min_dist, index = prototype_min_distance(torch.randn(0, 4, 3, 3), torch.rand(2, 4))
    assert min_dist.shape == (0, 2) and index.shape == (0, 2)


@pytest.mark.backends(*MAP_BACKENDS)
def test_empty_batch_map(backend):
    assert prototype_distance_map(torch.randn(0, 4, 3, 3), torch.rand(2, 4)).shape == (0, 2, 3, 3)


@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 6), (1, 1, 2, 2, 1), (3, 70, 9, 9, 40)])
def test_gradients_match_brute_force(backend, shape):
    batch, dim, height, width, num = shape
    features = torch.randn(batch, dim, height, width, requires_grad=True)
    prototypes = torch.rand(num, dim, requires_grad=True)
    weights = torch.randn(batch, num)
    min_dist, _ = prototype_min_distance(features, prototypes)
    grads = torch.autograd.grad((min_dist * weights).sum(), (features, prototypes))
    f64 = features.detach().double().requires_grad_()
    p64 = prototypes.detach().double().requires_grad_()
    brute = brute_force_distances(f64, p64).min(dim=2).values
    expected = torch.autograd.grad((brute * weights.double()).sum(), (f64, p64))
    for got, want in zip(grads, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_gradient_keeps_the_features_layout(backend):
    features = torch.randn(2, 6, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    prototypes = torch.rand(3, 6, requires_grad=True)
    prototype_min_distance(features, prototypes)[0].sum().backward()
    reference = features.detach().contiguous().requires_grad_()
    prototype_min_distance_ref(reference, prototypes.detach())[0].sum().backward()
    torch.testing.assert_close(features.grad, reference.grad)


def test_backward_is_bit_reproducible(backend):
    torch.manual_seed(0)
    features = torch.randn(4, 24, 6, 6)
    features[:, :, 0, 0] = features[:, :, 1, 1]  # shared winners: order of sums matters
    prototypes = torch.rand(40, 24)

    def gradients():
        f = features.clone().requires_grad_()
        p = prototypes.clone().requires_grad_()
        (prototype_min_distance(f, p)[0] * torch.linspace(-1, 1, 40)).sum().backward()
        return f.grad, p.grad

    first, second = gradients(), gradients()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.backends("triton")
def test_atomic_triton_backward_is_close(backend, monkeypatch):
    monkeypatch.setenv("PATRONUS_DETERMINISTIC", "0")
    features = torch.randn(3, 20, 5, 5, requires_grad=True)
    prototypes = torch.rand(9, 20, requires_grad=True)
    prototype_min_distance(features, prototypes)[0].sum().backward()
    reference_f = features.detach().clone().requires_grad_()
    reference_p = prototypes.detach().clone().requires_grad_()
    prototype_min_distance_ref(reference_f, reference_p)[0].sum().backward()
    torch.testing.assert_close(features.grad, reference_f.grad)
    torch.testing.assert_close(prototypes.grad, reference_p.grad)


@pytest.mark.backends("torch", "cpp")
def test_gradcheck(backend):
    features = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    prototypes = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, p: prototype_min_distance(f, p)[0], (features, prototypes), fast_mode=True
    )


@pytest.mark.backends("torch")  # float64 never runs on Triton
def test_gradcheck_map(backend):
    features = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    prototypes = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(prototype_distance_map, (features, prototypes), fast_mode=True)


def test_opcheck(backend):
    features = torch.randn(2, 5, 3, 4, requires_grad=True)
    prototypes = torch.rand(6, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.patronus.prototype_min_distance, (features, prototypes))
    grad = torch.randn(2, 6)
    _, index = prototype_min_distance(features.detach(), prototypes.detach())
    torch.library.opcheck(
        torch.ops.patronus.prototype_min_distance_backward,
        (grad, features.detach(), prototypes.detach(), index, True),
    )


@pytest.mark.backends(*MAP_BACKENDS)
def test_opcheck_map(backend):
    features = torch.randn(2, 5, 3, 4, requires_grad=True)
    prototypes = torch.rand(6, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.patronus.prototype_distance_map, (features, prototypes))


@pytest.mark.backends("torch", "triton")
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    def layer(features, prototypes):
        min_dist, index = prototype_min_distance(features, prototypes)
        activation = torch.log((min_dist + 1) / (min_dist + 1e-4))
        return activation.sum() + prototype_distance_map(features, prototypes).mean(), index

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    features = torch.randn(2, 8, 5, 5, requires_grad=True)
    prototypes = torch.rand(3, 8, requires_grad=True)
    loss, index = compiled(features, prototypes)
    loss.backward()
    expected_f = features.detach().clone().requires_grad_()
    expected_p = prototypes.detach().clone().requires_grad_()
    expected, expected_index = layer(expected_f, expected_p)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(features.grad, expected_f.grad)
    torch.testing.assert_close(prototypes.grad, expected_p.grad)


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    compiled = torch.compile(lambda f, p: prototype_min_distance(f, p)[0].sum(), fullgraph=True)
    features = torch.randn(2, 8, 5, 5)
    prototypes = torch.rand(3, 8)
    torch.testing.assert_close(
        compiled(features, prototypes), prototype_min_distance_ref(features, prototypes)[0].sum()
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.backends(*MAP_BACKENDS)
def test_distance_map_matches_brute_force(backend, dtype):
    features = torch.randn(2, 9, 5, 3).to(dtype)
    prototypes = torch.rand(7, 9).to(dtype)
    result = prototype_distance_map(features, prototypes)
    assert result.shape == (2, 7, 5, 3) and result.dtype == torch.float32
    expected = brute_force_distances(features, prototypes).reshape(2, 7, 5, 3)
    # the map uses the norm expansion: its error grows with the norms (here ~10), not with d
    torch.testing.assert_close(result.double(), expected, atol=1e-4, rtol=1e-5)
    assert (result >= 0).all()


@pytest.mark.backends(*MAP_BACKENDS)
def test_distance_map_gradient(backend):
    features = torch.randn(2, 4, 3, 3, requires_grad=True)
    prototypes = torch.rand(5, 4, requires_grad=True)
    weights = torch.randn(2, 5, 3, 3)
    (prototype_distance_map(features, prototypes) * weights).sum().backward()
    f = features.detach().double().requires_grad_()
    p = prototypes.detach().double().requires_grad_()
    (brute_force_distances(f, p).reshape(2, 5, 3, 3) * weights.double()).sum().backward()
    torch.testing.assert_close(features.grad.double(), f.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prototypes.grad.double(), p.grad, atol=1e-4, rtol=1e-4)


def test_nan_propagates_inside_the_op(backend):
    """A NaN patch wins the min (as torch.min does) and its distance is NaN; others stay finite."""
    features = torch.randn(2, 3, 2, 2)
    features[0, 0, 1, 1] = float("nan")
    min_dist, index = prototype_min_distance(features, torch.rand(2, 3))
    assert torch.isnan(min_dist[0]).all() and torch.equal(index[0], torch.tensor([3, 3]))
    assert torch.isfinite(min_dist[1]).all()


def test_reference_names_are_the_public_results(monkeypatch):
    monkeypatch.setenv("PATRONUS_BACKEND", "torch")
    features, prototypes = torch.randn(2, 4, 3, 3), torch.rand(5, 4)
    public = prototype_min_distance(features, prototypes)
    reference = prototype_min_distance_ref(features, prototypes)
    for got, want in zip(public, reference, strict=True):
        assert torch.equal(got, want)
    torch.testing.assert_close(
        prototype_distance_map(features, prototypes),
        prototype_distance_map_ref(features, prototypes),
    )


@pytest.mark.parametrize(
    ("features", "prototypes", "error", "match"),
    [
        (torch.randn(2, 4, 3, 3), torch.rand(5, 3), ValueError, "does not match"),
        (torch.randn(2, 4), torch.rand(5, 4), ValueError, r"\(B, D, H, W\)"),
        (torch.randn(2, 4, 3, 3), torch.rand(5, 4, 1), ValueError, r"\(P, D\)"),
        (torch.randint(0, 5, (2, 4, 3, 3)), torch.rand(5, 4), TypeError, "float"),
        (torch.randn(2, 4, 0, 3), torch.rand(5, 4), ValueError, "no patches"),
        (torch.randn(2, 4, 3, 3), torch.rand(0, 4), ValueError, "no prototypes"),
    ],
)
def test_bad_inputs_raise_clear_errors(features, prototypes, error, match):
    with pytest.raises(error, match=match):
        prototype_min_distance(features, prototypes)


def test_device_mismatch_is_reported():
    with pytest.raises(ValueError, match="one device"):
        prototype_min_distance(torch.randn(1, 2, 2, 2), torch.rand(3, 2, device="meta"))


def test_backend_selection(monkeypatch):
    features, prototypes = torch.randn(1, 2, 2, 2), torch.rand(3, 2)
    choices = _backend_choices_cpu()
    assert choices["prototype_min_distance"].name in ("cpp", "torch")
    assert choices["prototype_distance_map"].name == "torch"  # never the interpreter unforced
    monkeypatch.setenv("PATRONUS_BACKEND", "fastest")
    with pytest.raises(_backend.BackendUnavailableError, match="not a backend"):
        prototype_min_distance(features, prototypes)
    monkeypatch.setenv("PATRONUS_BACKEND", "cpp")  # the map has no cpp kernel: its usual choice
    assert _backend_choices_cpu()["prototype_distance_map"].name == "torch"
    prototype_distance_map(features, prototypes)
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(_backend.BackendUnavailableError, match="need CUDA tensors"):
        prototype_min_distance(features, prototypes)


def test_float32_products_follow_torchs_tf32_switch(monkeypatch):
    """On a GPU the Triton kernels multiply float32 features in TF32 exactly when torch allows TF32
    for float32 matrix products (as cuBLAS matmuls do), in full precision otherwise."""
    from patronus.kernels import prototype_distance as kernels

    monkeypatch.setattr(kernels, "INTERPRET", False)
    fp32, bf16 = torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    assert torch.get_float32_matmul_precision() == "highest"  # torch's default
    assert kernels._dot_dtype(fp32) == "fp32" and kernels._dot_dtype(bf16) == "bf16"
    try:
        torch.set_float32_matmul_precision("high")
        assert kernels.tf32_allowed() and kernels._dot_dtype(fp32) == "tf32"
        assert kernels._dot_dtype(bf16) == "bf16"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert kernels._dot_dtype(fp32) == "fp32"
    with pytest.raises(TypeError, match=r"bfloat16: torch\.float64"):
        kernels._dot_dtype(fp32.double())


@pytest.mark.skipif(
    not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
    reason=f"torch {torch.__version__} has only the older TF32 flag, not fp32_precision",
)
def test_tf32_switch_read_after_torchs_newer_api():
    """torch >= 2.9 refuses to read its older flag once the newer API set it; the kernels read the
    newer one (in a fresh process: mixing the two APIs leaves torch's state unreadable)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from patronus.kernels import prototype_distance as k\n"
        "print(k.tf32_allowed())\n"
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "print(k.tf32_allowed())\n"
        "torch.backends.cuda.matmul.fp32_precision = 'ieee'\n"
        "print(k.tf32_allowed())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "False"]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(64, 128, 26, 26, 100), (4, 256, 32, 32, 2000)])
def test_triton_forward_in_tf32(monkeypatch, shape):
    """With TF32 allowed the winner may be another patch within TF32 rounding of the minimum; the
    distance returned is that patch's, recomputed in float32."""
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")
    batch, dim, height, width, num = shape
    generator = torch.Generator("cuda").manual_seed(0)
    features = torch.randn(batch, dim, height, width, device="cuda", generator=generator)
    prototypes = torch.rand(num, dim, device="cuda", generator=generator)
    try:
        torch.set_float32_matmul_precision("high")
        min_dist, index = prototype_min_distance(features, prototypes)
        mapped = prototype_distance_map(features, prototypes)
    finally:
        torch.set_float32_matmul_precision("highest")
    distances = brute_force_distances(features, prototypes)
    chosen = distances.gather(2, index[..., None])[..., 0]
    torch.testing.assert_close(min_dist.double(), chosen, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(chosen, distances.min(2).values, atol=0.1, rtol=1e-3)
    torch.testing.assert_close(mapped.flatten(2).double(), distances, atol=0.1, rtol=1e-3)


def _backend_choices_cpu():
    from patronus.ops import backend_choices

    return backend_choices(torch.device("cpu"))


@pytest.mark.parametrize("offset", [0.0, 30.0, 1e3, -5e3])
@pytest.mark.parametrize("seed", range(3))
def test_winner_is_right_under_a_large_common_offset(backend, offset, seed):
    """Features with a large common offset and prototypes close to some of their patches: the
    expanded form cancels in float32 unless the inputs are centred first."""
    generator = torch.Generator(torch.get_default_device()).manual_seed(seed)
    features = offset + 0.05 * torch.randn(8, 128, 13, 13, generator=generator)
    prototypes = features[0].flatten(1).t()[:16] + 0.002 * torch.randn(16, 128, generator=generator)
    min_dist, index = prototype_min_distance(features, prototypes)
    expected, expected_index, _ = oracle(features, prototypes)
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(min_dist.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(index[0], torch.arange(16))  # each prototype finds its own patch


def test_infinite_patches_never_win_a_finite_minimum(backend):
    features = torch.randn(2, 6, 4, 5)
    prototypes = torch.rand(3, 6)
    features[0, 2, 0, 0] = float("inf")  # patch 0 of image 0
    features[1, :, 1, 1] = float("-inf")  # patch 6 of image 1
    features[1, 0, 2, 3] = 1e30  # patch 13 of image 1: its distance overflows float32
    min_dist, index = prototype_min_distance(features, prototypes)
    finite = features.clone()
    finite[0, :, 0, 0] = finite[1, :, 1, 1] = finite[1, :, 2, 3] = 1e6  # far: never the winner
    expected, expected_index, _ = oracle(finite, prototypes)
    assert torch.isfinite(min_dist).all()
    assert torch.equal(index, expected_index)
    torch.testing.assert_close(min_dist.double(), expected, **tolerance(torch.float32))


def test_all_infinite_distances_give_inf_at_the_smallest_index(backend):
    features = torch.full((1, 4, 3, 3), 1e20)
    features[0, 0, 1, 2] = -1e20  # every distance to prototypes near 0 overflows float32
    min_dist, index = prototype_min_distance(features, torch.rand(2, 4))
    assert torch.isinf(min_dist).all() and (min_dist > 0).all()
    assert index.tolist() == [[0, 0]]


def test_huge_features_near_their_prototypes_stay_finite(backend):
    features = 1e20 * (1 + 1e-3 * torch.randn(2, 8, 3, 3))  # rounded to float32
    prototypes = features[1].flatten(1).t()[[4, 7]].clone()
    min_dist, index = prototype_min_distance(features, prototypes)
    assert index[1].tolist() == [4, 7] and min_dist[1].tolist() == [0.0, 0.0]


def test_public_backward_op_checks_its_index(backend):
    features, prototypes = torch.randn(2, 3, 4, 4), torch.rand(5, 3)
    grad = torch.ones(2, 5)
    for bad in (16, -1):
        index = torch.zeros(2, 5, dtype=torch.int64)
        index[1, 3] = bad
        with pytest.raises((IndexError, RuntimeError), match=f"{bad}.*outside"):
            torch.ops.patronus.prototype_min_distance_backward(
                grad, features, prototypes, index, True
            )
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        torch.ops.patronus.prototype_min_distance_backward(
            grad, features, prototypes, torch.zeros(2, 4, dtype=torch.int64), True
        )


def test_double_backward(backend):
    """Gradient penalties need the backward to be differentiable (like the distance map's)."""
    features = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    prototypes = torch.rand(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda f, p: prototype_min_distance(f, p)[0], (features, prototypes)
    )


# ------------------------------ GPU only: sizes and graph capture the interpreter cannot run
GPU_SHAPES = [(64, 128, 26, 26, 100), (4, 256, 32, 32, 2000)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_forward_at_paper_sizes(monkeypatch, shape, dtype):
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")
    batch, dim, height, width, num = shape
    features = torch.randn(batch, dim, height, width, device="cuda").to(dtype)
    prototypes = torch.rand(num, dim, device="cuda")
    min_dist, index = prototype_min_distance(features, prototypes)
    distances = brute_force_distances(features, prototypes)
    expected = distances.min(2).values
    torch.testing.assert_close(min_dist.double(), expected, atol=1e-3, rtol=1e-4)
    chosen = distances.gather(2, index[..., None])[..., 0]
    # the chosen patch is a minimiser up to the half-precision products' rounding
    half = dtype != torch.float32
    torch.testing.assert_close(chosen, expected, atol=0.05 if half else 1e-3,
                               rtol=1e-2 if half else 1e-4)  # fmt: skip


@pytest.mark.cuda
def test_triton_under_compile_and_cuda_graph(monkeypatch):
    monkeypatch.setenv("PATRONUS_BACKEND", "triton")
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


def _autotune_configs():
    from patronus.kernels import prototype_distance as kernels

    rows = kernels._FORWARD_CONFIGS + kernels._BACKWARD_CONFIGS
    return [pytest.param(config, id=str(config).replace(" ", "")) for config in rows]


@pytest.mark.backends("triton")
@pytest.mark.parametrize("config", _autotune_configs())
def test_every_autotune_configuration_matches_brute_force(backend, config):
    """The autotuner checks speed, not results: each configuration it may pick computes the
    minimum, its index, both gradients and the distance map right, on sizes beyond one block in
    every dimension (N = 143 patches, D = 75, P = 133; none a multiple of a block)."""
    from patronus.kernels import prototype_distance as kernels

    seed = zlib.crc32(str(config).encode())  # hash() of a str changes with every process
    generator = torch.Generator(torch.get_default_device()).manual_seed(seed)
    features = torch.randn(2, 75, 11, 13, generator=generator).requires_grad_()
    prototypes = torch.rand(133, 75, generator=generator).requires_grad_()
    weights = torch.randn(2, 133, generator=generator)
    with kernels.forced_config(config):
        min_dist, index = prototype_min_distance(features, prototypes)
        grads = torch.autograd.grad((min_dist * weights).sum(), (features, prototypes))
        distance_map = prototype_distance_map(features.detach(), prototypes.detach())
    assert_min_matches(min_dist.detach(), index, features.detach(), prototypes.detach(), True)
    f64 = features.detach().double().requires_grad_()
    p64 = prototypes.detach().double().requires_grad_()
    brute = brute_force_distances(f64, p64)
    expected = torch.autograd.grad((brute.min(dim=2).values * weights.double()).sum(), (f64, p64))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        distance_map.double(), brute.detach().reshape(2, 133, 11, 13), atol=1e-3, rtol=1e-5
    )


@pytest.mark.autotune
@pytest.mark.backends("triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autotuned_launch_matches_brute_force(backend, dtype):
    """The other CUDA tests launch one fixed configuration (tests/ops/conftest.py); here the
    autotuner picks, for the forward and both backward kernels."""
    features = torch.randn(5, 128, 10, 10).to(dtype).requires_grad_()
    prototypes = torch.rand(30, 128).requires_grad_()
    min_dist, index = prototype_min_distance(features, prototypes)
    assert_min_matches(
        min_dist.detach(), index, features.detach(), prototypes.detach(), dtype not in HALF
    )
    grads = torch.autograd.grad(min_dist.sum(), (features, prototypes))
    f64 = features.detach().double().requires_grad_()
    p64 = prototypes.detach().double().requires_grad_()
    brute = brute_force_distances(f64, p64).min(dim=2).values
    expected = torch.autograd.grad(brute.sum(), (f64, p64))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got.double(), want, **tolerance(dtype))
