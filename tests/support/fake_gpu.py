"""A fake GPU for CPU-only tests: tensors that say ``device='meta'`` but hold real CPU data.

ComfyUI moves a model's parameters and buffers to the load device and nothing else. On a CPU-only
test machine the load device is the CPU, so code that keeps tensors or devices of its own never
fails there. This module gives the tests a second device that behaves like a GPU:

- :class:`OnGPU` is a wrapper tensor: ``device`` reports ``meta``, the data is a CPU tensor
  (``.elem``), so every computation gives real numbers;
- ops on fake-GPU tensors give fake-GPU tensors; an op that mixes a fake-GPU tensor with a CPU
  tensor of one or more dimensions raises ``Expected all tensors to be on the same device``, as CUDA
  does (0-dim CPU tensors are allowed, as with CUDA); copies (``.to``, ``.cpu()``, ``copy_``) move
  between the two;
- inside :func:`computing` (a ``TorchDispatchMode``) ``.to("meta")`` of CPU tensors, modules and
  factory calls with ``device="meta"`` make fake-GPU tensors, and ``torch.Generator("meta")`` gives
  a CPU generator that reports the fake GPU as its device (torch has no meta generators);
- outside :func:`computing`, ops on existing fake-GPU tensors still work (``.cpu()``, printing,
  ComfyUI's offloading), but new tensors made with ``device="meta"`` are torch's own data-less
  meta tensors, and any op that meets one raises.

The stand-in ``comfy.model_management`` uses this device as its GPU after ``use_fake_gpu()``;
:func:`two_devices` does that for a block of a test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
_CPU = torch.device("cpu")
_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
_RealGenerator = torch.Generator
_active = 0


class OnGPU(torch.Tensor):
    """A tensor on the fake GPU: reports ``device='meta'``, computes on its CPU ``elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            device=DEVICE, requires_grad=elem.requires_grad)
        tensor.elem = elem
        return tensor

    def __repr__(self) -> str:
        return f"OnGPU({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _target(kwargs: dict) -> torch.device | None:
    device = kwargs.get("device")
    return torch.device(device) if device is not None else None


def _mutated(func, args, kwargs):
    """The argument an in-place or ``out=`` op writes to and returns, else None."""
    schema = func._schema
    if not schema.returns or schema.returns[0].alias_info is None or not schema.returns[0].alias_info.is_write:
        return None
    returned = schema.returns[0].alias_info.before_set
    for i, argument in enumerate(schema.arguments):
        info = argument.alias_info
        if info is not None and info.is_write and info.before_set & returned:
            return kwargs[argument.name] if argument.name in kwargs else args[i]
    return None


def _check_devices(func, tensors: list[torch.Tensor]) -> None:
    on_gpu = [isinstance(t, OnGPU) for t in tensors]
    if any(not gpu and t.device.type == "meta" for gpu, t in zip(on_gpu, tensors)):
        raise RuntimeError(f"{func}: a data-less meta tensor; tensors on the fake GPU must be made inside "
                           "fake_gpu.computing()")
    if any(on_gpu) and func not in _COPIES:
        others = [t for gpu, t in zip(on_gpu, tensors) if not gpu and t.dim() > 0]
        if others:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"fake GPU (meta) and {others[0].device}! ({func})")


def _dispatch(func, args, kwargs):
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    _check_devices(func, tensors)
    target = _target(kwargs)
    unwrap = lambda t: t.elem if isinstance(t, OnGPU) else t  # noqa: E731
    plain_args, plain_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
    if target is not None and target.type == "meta":
        plain_kwargs["device"] = _CPU
    out = func(*plain_args, **plain_kwargs)
    written = _mutated(func, args, kwargs)
    if written is not None:
        return written
    if target is not None:
        wrap = target.type == "meta"
    else:
        wrap = any(isinstance(t, OnGPU) for t in tensors)
    if not wrap:
        return out
    return tree_map(lambda t: OnGPU(t) if isinstance(t, torch.Tensor) and not isinstance(t, OnGPU) else t, out)


class FakeGPU(TorchDispatchMode):
    """While active, ``device='meta'`` means the fake GPU for every op, factories included."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class _TensorsFromData(TorchFunctionMode):
    """What happens below the dispatcher: ``torch.tensor(data, device='meta')`` is built on the CPU
    and moved to the fake GPU; ``.tolist()`` of a fake-GPU tensor reads its data (as CUDA does)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist and isinstance(args[0], OnGPU):
            return args[0].elem.tolist()
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type == "meta":
            return func(*args, **{**kwargs, "device": _CPU}).to(DEVICE)
        return func(*args, **kwargs)


class _AnyGenerator(type(torch.Generator)):
    def __instancecheck__(cls, instance) -> bool:
        return isinstance(instance, _RealGenerator)

    def __subclasscheck__(cls, subclass) -> bool:
        return issubclass(subclass, _RealGenerator)


class Generator(_RealGenerator, metaclass=_AnyGenerator):
    """``torch.Generator`` inside :func:`computing`: ``Generator("meta")`` is a CPU generator that
    reports the fake GPU as its device, so code that draws noise "on the load device" works."""

    def __new__(cls, device="cpu"):
        if torch.device(device).type != "meta":
            return _RealGenerator(device)
        return super().__new__(cls, "cpu")

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return DEVICE


def left_behind(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """What a host's model management would leave where it is: tensors kept as module attributes
    outside ``_parameters``/``_buffers`` (also inside lists, tuples and dicts) and stored
    ``torch.device`` values, over every submodule's ``__dict__``, as ``"submodule.attribute"``.
    ``skip``: attribute paths to ignore (ComfyUI writes ``device`` on the model it manages)."""
    found = []
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            path = f"{name}.{key}" if name else key
            if key in ("_parameters", "_buffers", "_modules") or path in skip:
                continue
            if _holds_tensor_or_device(value):
                found.append(path)
    return found


def _holds_tensor_or_device(value) -> bool:
    items = list(value.values()) if isinstance(value, dict) else value
    items = items if isinstance(items, (list, tuple)) else [items]
    return any(isinstance(item, (torch.Tensor, torch.device)) for item in items)


def is_active() -> bool:
    """Whether :func:`computing` is active (new meta tensors are fake-GPU tensors)."""
    return _active > 0


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """Run the block with the fake GPU: factory calls and ``.to`` with ``device='meta'`` make
    fake-GPU tensors; ``torch.Generator('meta')`` works. Re-entrant."""
    global _active
    if _active:
        _active += 1
        try:
            yield
        finally:
            _active -= 1
        return
    _active = 1
    torch.Generator = Generator
    try:
        with FakeGPU(), _TensorsFromData():
            yield
    finally:
        torch.Generator = _RealGenerator
        _active = 0


@contextlib.contextmanager
def two_devices(**machine) -> Iterator[None]:
    """The stand-in ComfyUI on a machine with a GPU for the block: load devices are the fake GPU,
    offload and intermediate devices the CPU (``machine``: see ``model_management.use_fake_gpu``).
    Models still on the fake GPU are unloaded to the CPU afterwards."""
    import comfy.model_management as mm

    mm.use_fake_gpu(**machine)
    try:
        yield
    finally:
        mm.unload_all_models()
        mm.use_cpu()
