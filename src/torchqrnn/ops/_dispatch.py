"""The one place that decides which implementation runs: backend names, device rules, lazy kernel imports."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

BACKENDS = ("auto", "reference", "cpu", "triton")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def shape_str(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_backend(owner: str, backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: expected backend to be one of {BACKENDS}, got {backend!r}")
    return str(backend)


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device, kernels: tuple[str, ...] = ("cpu", "triton")) -> str:
    """The backend that runs for tensors on ``device``: the one place that branches on the device.

    ``kernels`` names the kernel backends the calling op has; ``"auto"`` falls back to the reference loop,
    with a warning, where the device's kernel is missing.
    """
    check_backend("torchqrnn", backend)
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        if device.type == "cuda":
            if "triton" in kernels and _triton_available():
                return "triton"
            reason = "Triton is not installed" if "triton" in kernels else "this op has no Triton kernel yet"
            warnings.warn(
                f"torchqrnn: {reason}, so CUDA tensors run the slow reference loop"
                + ("; `pip install triton` for the fused GPU kernels" if "triton" in kernels else ""),
                stacklevel=3,
            )
        return "reference"
    if backend != "reference" and backend not in kernels:
        raise ValueError(
            f"backend={backend!r} is not available for this op; it has {kernels} and 'reference'"
        )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' runs on CPU tensors only, got tensors on {device}")
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 in the environment to run the "
            "Triton kernels in Triton's CPU interpreter (slow; for tests)"
        )
    return backend


_kernel_modules: dict[tuple[str, str], ModuleType] = {}


def kernel_module(op_package: str, backend: str) -> ModuleType:
    """The module of ``op_package`` holding a kernel backend's launchers, imported on first use."""
    if torch.jit.is_tracing():  # a trace cannot record a kernel: say what works (legacy ONNX export too)
        from ..export.jit_trace import traced_kernel_error

        raise traced_kernel_error(backend)
    module = _kernel_modules.get((op_package, backend))
    if module is not None:  # the import machinery costs microseconds even for a loaded module
        return module
    try:
        module = _kernel_modules[op_package, backend] = importlib.import_module(f"{op_package}.{backend}")
        return module
    except ImportError as error:
        package = {"cpu": "numba", "triton": "triton"}.get(backend)
        if package is None or importlib.util.find_spec(package) is not None:
            raise  # the package is there: the failure is something else, and its own message says what
        raise ImportError(
            f"torchqrnn backend {backend!r} needs the package {package!r}: `pip install {package}` "
            f"(or `pip install torchqrnn[{package}]`)"
        ) from error


def time_major(t: Tensor, batch_first: bool) -> Tensor:
    return t.transpose(0, 1) if batch_first else t


def check_tensor(owner: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: expected {name} to be a Tensor, got {type(value).__name__}")
    return value


def check_state(
    owner: str, name: str, state: object, expected: tuple[int, ...], like: Tensor, what: Callable[[], str]
) -> Tensor:
    """A state tensor must have the ``expected`` shape and the dtype and device of ``like``.

    ``what`` describes the tensor the shape follows from; it is called only to word an error, since
    formatting shapes costs microseconds on every call and is a graph break under dynamic shapes.
    """
    state = check_tensor(owner, name, state)
    if tuple(state.shape) != expected:
        raise ValueError(f"{owner}: expected {name} of shape {expected} for {what()}, got {shape_str(state)}")
    if state.dtype != like.dtype:
        raise RuntimeError(f"{owner}: expected {name} to have the dtype {like.dtype}, got {state.dtype}")
    if state.device != like.device:
        raise RuntimeError(f"{owner}: expected {name} on the device {like.device}, got {state.device}")
    return state
