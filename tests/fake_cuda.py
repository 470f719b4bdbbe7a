"""A CUDA device simulated on the CPU, to find device-placement mistakes without a GPU.

Inside :func:`fake_cuda`, a CPU-only build of torch behaves, for placement, like one with a GPU:
``.to("cuda")``, ``.cuda()``, ``device="cuda"`` factories and ``torch.Generator("cuda")`` give
tensors (and generators) that say they are on ``cuda:0`` while their values live in CPU memory, and
every op refuses to mix them with CPU tensors as CUDA refuses:

- tensors of one op must share a device, except 0-dim CPU tensors (scalars) and the CPU indices of
  indexing (``x[idx]``, ``x[idx] = v``); copies (``.to``, ``.cpu()``, ``copy_``) may cross devices;
- a generator must be on the device its op draws on;
- ``.numpy()`` of a CUDA tensor raises (``.item()``, ``.tolist()`` and ``float()`` work, as on
  CUDA).

What it does not simulate: autograd (its engine needs a real accelerator, so backward passes
raise), autocast, streams, CUDA graphs, and the kernels themselves: run with
``PATRONUS_BACKEND=torch`` so that every op takes its PyTorch reference. Use it only in a process
of its own (:func:`load_guard` registers a CUDA device guard that cannot be removed): the tests
in ``tests/test_fake_cuda.py`` run their code in a subprocess.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
GUARD_SOURCE = Path(__file__).parent / "fixtures" / "fake_cuda_guard.cpp"
aten = torch.ops.aten
CROSSING = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default,
            aten.lift_fresh.default}  # fmt: skip
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
            aten._index_put_impl_.default}  # fmt: skip
# composite ops whose C++ bodies reshape their own output in place (quantile's squeeze_), which a
# wrapper tensor cannot follow: checked at the call and computed whole on the CPU values
WHOLE = {torch.quantile, torch.Tensor.quantile, torch.nanquantile, torch.Tensor.nanquantile}


def load_guard(build_dir: Path) -> None:
    """Build and load the do-nothing CUDA device guard (a few seconds; once per process)."""
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(GUARD_SOURCE)]
    load("fake_cuda_guard", sources, is_python_module=False, build_directory=str(build_dir))


class FakeCudaTensor(torch.Tensor):
    """A tensor on ``cuda:0`` whose values are the CPU tensor ``elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> FakeCudaTensor:
        wrapper = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=CUDA, requires_grad=elem.requires_grad,
        )  # fmt: skip
        wrapper.elem = elem
        return wrapper

    def __repr__(self) -> str:  # type: ignore[override]
        return f"FakeCudaTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class FakeCudaGenerator(torch.Generator):
    """A CPU generator that says it is a CUDA one (ops check it against their device)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return CUDA


def _device(tensor: torch.Tensor) -> str:
    return "cuda" if isinstance(tensor, FakeCudaTensor) else tensor.device.type


def _check_devices(func, args, kwargs) -> None:
    """Raise as CUDA would for an op mixing devices."""
    if func in CROSSING:
        return
    tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
    if func in INDEXING:
        indexed = args[0]
        indices = [i for i in args[1] if i is not None]
        for index in indices:
            if _device(index) not in ("cpu", _device(indexed)):
                raise RuntimeError(
                    f"{func}: indices should be either on cpu or on the same device as the "
                    f"indexed tensor ({_device(indexed)}), got {_device(index)}"
                )
        tensors = [t for t in tensors if all(t is not i for i in indices)]
    devices = {_device(t) for t in tensors if not (_device(t) == "cpu" and t.dim() == 0)}
    if len(devices) > 1:
        found = ", ".join(f"{_device(t)} {tuple(t.shape)}" for t in tensors)
        raise RuntimeError(f"Expected all tensors to be on the same device ({func}): {found}")


def _check_generator(func, args, kwargs) -> None:
    generator = kwargs.get("generator")
    if generator is None:
        return
    device = kwargs.get("device")
    on_cuda = (device is not None and torch.device(device).type == "cuda") or any(
        isinstance(a, FakeCudaTensor) for a in tree_flatten(args)[0]
    )
    if isinstance(generator, FakeCudaGenerator) != on_cuda:
        want, got = ("cuda", "cpu") if on_cuda else ("cpu", "cuda")
        raise RuntimeError(
            f"Expected a '{want}' device type for generator but found '{got}' ({func})"
        )


def _unwrap(value):
    return value.elem if isinstance(value, FakeCudaTensor) else value


def _run(func, args, kwargs):
    """An op on the simulated device: checked, run on the CPU values, its outputs wrapped."""
    _check_devices(func, args, kwargs)
    on_cuda = any(isinstance(a, FakeCudaTensor) for a in tree_flatten((args, kwargs))[0])
    if kwargs.get("device") is not None:
        on_cuda = torch.device(kwargs["device"]).type == "cuda"
        kwargs = {**kwargs, "device": torch.device("cpu")}
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    first = args[0] if args else None
    in_place = func._schema.name.endswith("_") and isinstance(first, FakeCudaTensor)
    if in_place and out.shape == first.shape and out.stride() == first.stride():
        return first  # in place, and the wrapper's shape still holds
    if "out" in kwargs:
        return kwargs["out"]
    if not on_cuda:
        return out
    return tree_map(lambda a: FakeCudaTensor(a) if isinstance(a, torch.Tensor) else a, out)


class _FactoryMode(TorchDispatchMode):
    """Ops without a simulated tensor among their arguments: factories asked for ``cuda``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        device = kwargs.get("device")
        if any(isinstance(a, FakeCudaTensor) for a in flat) or (
            device is not None and torch.device(device).type == "cuda"
        ):
            return _run(func, args, kwargs)
        _check_devices(func, args, kwargs)
        return func(*args, **kwargs)


class _CallMode(TorchFunctionMode):
    """Checks made where the Python objects are still at hand: generators, whole ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        _check_generator(func, args, kwargs)
        if func in WHOLE and any(isinstance(a, FakeCudaTensor) for a in tree_flatten(args)[0]):
            _check_devices(func, args, kwargs)
            return FakeCudaTensor(func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs)))
        return func(*args, **kwargs)


def _is_cuda(device) -> bool:
    return isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"


@contextlib.contextmanager
def _patched(owner, name: str, replacement) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _to(original):
    def to(self, *args, **kwargs):
        if args and isinstance(args[0], FakeCudaTensor):  # .to(other): its device and dtype
            return to(self, CUDA, args[0].dtype, *args[1:], **kwargs)
        target = next((a for a in (*args, kwargs.get("device")) if _is_cuda(a)), None)
        if target is None or isinstance(self, FakeCudaTensor):
            return original(self, *args, **kwargs)
        args = tuple("cpu" if a is target else a for a in args)
        kwargs = {**kwargs, "device": "cpu"} if "device" in kwargs else kwargs
        moved = FakeCudaTensor(original(self, *args, **kwargs).detach())
        return moved.requires_grad_(self.requires_grad) if self.is_floating_point() else moved

    return to


def _cuda(original):
    def cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
        return self.to(CUDA, non_blocking=non_blocking)

    return cuda


def _cpu_list_indices(original):
    # THPVariable_getitem turns a list index into a tensor on the indexed tensor's device below the
    # dispatch modes: make it a CPU index tensor first (which CUDA indexing accepts)
    def method(self, index, *value):
        if isinstance(self, FakeCudaTensor):
            if isinstance(index, list):
                index = torch.tensor(index)
            elif isinstance(index, tuple):
                index = tuple(torch.tensor(i) if isinstance(i, list) else i for i in index)
        return original(self, index, *value)

    return method


def _from_data(original):
    def create(data, *args, device=None, **kwargs):
        if _is_cuda(device):
            return FakeCudaTensor(original(data, *args, device="cpu", **kwargs))
        return original(data, *args, device=device, **kwargs)

    return create


def _tolist(original):
    return lambda self: original(_unwrap(self))


def _numpy(original):
    def numpy(self, *args, **kwargs):
        if isinstance(self, FakeCudaTensor):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                "tensor to host memory first."
            )
        return original(self, *args, **kwargs)

    return numpy


def _generator_class(original):
    class _GeneratorType(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, original)

        def __subclasscheck__(cls, subclass):
            return issubclass(subclass, original)

        def __call__(cls, device="cpu"):
            return FakeCudaGenerator() if _is_cuda(device) else original(device)

    class Generator(metaclass=_GeneratorType):
        pass

    return Generator


@contextlib.contextmanager
def fake_cuda() -> Iterator[None]:
    """Simulate ``cuda:0`` (after :func:`load_guard`) until the block ends."""
    patches = [
        (torch.Tensor, "to", _to), (torch.Tensor, "cuda", _cuda),
        (torch.Tensor, "__getitem__", _cpu_list_indices),
        (torch.Tensor, "__setitem__", _cpu_list_indices),
        (torch.Tensor, "tolist", _tolist), (torch.Tensor, "numpy", _numpy),
        (torch, "tensor", _from_data), (torch, "as_tensor", _from_data),
        (torch, "Generator", _generator_class),
        (torch.cuda, "_lazy_init", lambda original: lambda: None),
        (torch.cuda, "is_available", lambda original: lambda: True),
        (torch.cuda, "device_count", lambda original: lambda: 1),
    ]  # fmt: skip
    swap = torch.__future__.get_swap_module_params_on_conversion()
    with contextlib.ExitStack() as stack:
        for owner, name, replacement in patches:
            stack.enter_context(_patched(owner, name, replacement))
        torch.__future__.set_swap_module_params_on_conversion(True)  # Module.to keeps the wrapper
        stack.callback(torch.__future__.set_swap_module_params_on_conversion, swap)
        stack.enter_context(_FactoryMode())
        stack.enter_context(_CallMode())
        yield
