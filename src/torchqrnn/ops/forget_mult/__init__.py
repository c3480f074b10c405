"""ForgetMult, the QRNN recurrence: validation, the one backend dispatcher, autograd, ``torch.library`` op.

Data flows one way: :func:`forget_mult` checks its arguments, brings them to 3-D, picks a backend and calls
either the plain reference loop (PyTorch autograd) or the ``torchqrnn::forget_mult`` custom op, whose
implementation runs the chosen kernel module (``cpu`` = numba, ``triton``) and whose registered backward
calls ``torchqrnn::forget_mult_backward``. Both ops have fake implementations, so ``torch.compile`` traces
through them without graph breaks. Kernel modules are imported on first use, never at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .reference import forget_mult_reference

__all__ = ["BACKENDS", "forget_mult", "forget_mult_reference", "resolve_backend"]

BACKENDS = ("auto", "reference", "cpu", "triton")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _state_shape(x: Tensor, batch_first: bool) -> tuple[int, int]:
    return (x.shape[0] if batch_first else x.shape[1], x.shape[2])


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"forget_mult: expected {name} to be a Tensor, got {type(value).__name__}")
    return value


def check_inputs(
    f: object, x: object, h0: object, batch_first: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate the public arguments; raise naming the argument, the expected and the actual value."""
    x = _check_tensor("x", x)
    f = _check_tensor("f", f)
    if x.dim() not in (2, 3):
        raise ValueError(
            "forget_mult: expected x to be 2-D (T, H) unbatched or 3-D (T, B, H) / (B, T, H), "
            f"got a {x.dim()}-D tensor of shape {_shape(x)}"
        )
    if f.shape != x.shape:
        raise ValueError(f"forget_mult: expected f to have the shape of x {_shape(x)}, got {_shape(f)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            "forget_mult: expected x to be float32, float64, bfloat16 or float16, got " + str(x.dtype)
        )
    if f.dtype != x.dtype:
        raise RuntimeError(f"forget_mult: expected f to have the dtype of x ({x.dtype}), got {f.dtype}")
    if f.device != x.device:
        raise RuntimeError(f"forget_mult: expected f on the device of x ({x.device}), got {f.device}")
    if h0 is not None:
        h0 = _check_tensor("h0", h0)
        expected = (x.shape[-1],) if x.dim() == 2 else _state_shape(x, batch_first)
        if tuple(h0.shape) != expected:
            layout = "unbatched" if x.dim() == 2 else f"batch_first={batch_first}"
            raise ValueError(
                f"forget_mult: expected h0 of shape {expected} for x of shape {_shape(x)} ({layout}), "
                f"got {_shape(h0)}"
            )
        if h0.dtype != x.dtype:
            raise RuntimeError(f"forget_mult: expected h0 to have the dtype of x ({x.dtype}), got {h0.dtype}")
        if h0.device != x.device:
            raise RuntimeError(f"forget_mult: expected h0 on the device of x ({x.device}), got {h0.device}")
    if backend not in BACKENDS:
        raise ValueError(f"forget_mult: expected backend to be one of {BACKENDS}, got {backend!r}")
    return f, x, h0


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs for tensors on ``device``: the one place that branches on the device."""
    if backend not in BACKENDS:
        raise ValueError(f"expected backend to be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        if device.type == "cuda":
            if _triton_available():
                return "triton"
            warnings.warn(
                "torchqrnn: Triton is not installed, so CUDA tensors run the slow reference loop; "
                "`pip install triton` (or `pip install torchqrnn[triton]`) for the fused GPU kernels",
                stacklevel=3,
            )
        return "reference"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' runs on CPU tensors only, got tensors on {device}")
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 in the environment to run the "
            "Triton kernels in Triton's CPU interpreter (slow; for tests)"
        )
    return backend


def kernel_module(backend: str) -> ModuleType:
    """The module holding ``forward`` / ``backward`` for a kernel backend, imported on first use."""
    try:
        return importlib.import_module(f"{__name__}.{backend}")
    except ImportError as error:
        package = {"cpu": "numba", "triton": "triton"}[backend]
        raise ImportError(
            f"torchqrnn backend {backend!r} needs the package {package!r}: `pip install {package}` "
            f"(or `pip install torchqrnn[{package}]`)"
        ) from error


def _time_major(t: Tensor, batch_first: bool) -> Tensor:
    return t.transpose(0, 1) if batch_first else t


# ---------------------------------------------------------------------------------------------------------
# The custom ops. They take 3-D tensors in the caller's layout; outputs are contiguous in that layout.

_FORWARD_SCHEMA = "(Tensor f, Tensor x, Tensor? h0, bool batch_first, bool reverse, str backend) -> Tensor"
_BACKWARD_SCHEMA = (
    "(Tensor grad, Tensor f, Tensor x, Tensor out, Tensor? h0, bool batch_first, bool reverse, str backend)"
    " -> (Tensor, Tensor, Tensor)"
)


# torch.library.define + impl rather than custom_op: custom_op wraps the implementation in a dynamo guard
# whose first call imports torch._dynamo (1.4 s here), which would triple the cost of a process's first call.
# The implementations are registered for every backend key; the dispatcher only sends kernel backends here.
torch.library.define("torchqrnn::forget_mult", _FORWARD_SCHEMA)
torch.library.define("torchqrnn::forget_mult_backward", _BACKWARD_SCHEMA)


def _forget_mult_impl(
    f: Tensor, x: Tensor, h0: Tensor | None, batch_first: bool, reverse: bool, backend: str
) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    kernel_module(backend).forward(
        _time_major(f, batch_first), _time_major(x, batch_first), h0, _time_major(out, batch_first), reverse
    )
    return out


torch.library.impl("torchqrnn::forget_mult", "CompositeExplicitAutograd", _forget_mult_impl)


@torch.library.register_fake("torchqrnn::forget_mult")
def _forget_mult_fake(
    f: Tensor, x: Tensor, h0: Tensor | None, batch_first: bool, reverse: bool, backend: str
) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _forget_mult_backward_impl(
    grad: Tensor,
    f: Tensor,
    x: Tensor,
    out: Tensor,
    h0: Tensor | None,
    batch_first: bool,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    df = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dh0 = torch.empty(_state_shape(x, batch_first), dtype=x.dtype, device=x.device)
    kernel_module(backend).backward(
        *(_time_major(t, batch_first) for t in (grad, f, x, out)),
        h0,
        reverse,
        _time_major(df, batch_first),
        _time_major(dx, batch_first),
        dh0,
    )
    return df, dx, dh0


torch.library.impl("torchqrnn::forget_mult_backward", "CompositeExplicitAutograd", _forget_mult_backward_impl)


@torch.library.register_fake("torchqrnn::forget_mult_backward")
def _forget_mult_backward_fake(
    grad: Tensor,
    f: Tensor,
    x: Tensor,
    out: Tensor,
    h0: Tensor | None,
    batch_first: bool,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    state = torch.empty(_state_shape(x, batch_first), dtype=x.dtype, device=x.device)
    like_x = functools.partial(torch.empty, x.shape, dtype=x.dtype, device=x.device)
    return like_x(), like_x(), state


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    f, x, h0, batch_first, reverse, backend = inputs
    ctx.save_for_backward(f, x, output, h0)
    ctx.batch_first, ctx.reverse, ctx.backend = batch_first, reverse, backend


def _backward_through(backward: Callable[..., tuple[Tensor, Tensor, Tensor]], ctx: Any, grad: Tensor):
    f, x, out, h0 = ctx.saved_tensors
    df, dx, dh0 = backward(grad, f, x, out, h0, ctx.batch_first, ctx.reverse, ctx.backend)
    return df, dx, (dh0 if h0 is not None else None), None, None, None


torch.library.register_autograd(
    "torchqrnn::forget_mult",
    functools.partial(_backward_through, torch.ops.torchqrnn.forget_mult_backward),
    setup_context=_setup_context,
)


class _ForgetMultFunction(torch.autograd.Function):
    """The eager twin of the op's autograd registration: the same kernels without the per-call cost of
    dispatching to registered Python kernels (about 0.2 ms a forward+backward, measured here)."""

    @staticmethod
    def forward(
        ctx: Any, f: Tensor, x: Tensor, h0: Tensor | None, batch_first: bool, reverse: bool, backend: str
    ) -> Tensor:
        # forward(ctx, ...) rather than setup_context: apply() then skips binding the signature on every call.
        inputs = (f, x, h0, batch_first, reverse, backend)
        out = _forget_mult_impl(*inputs)
        _setup_context(ctx, inputs, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return _backward_through(_forget_mult_backward_impl, ctx, grad)


# ---------------------------------------------------------------------------------------------------------


def forget_mult(
    f: Tensor,
    x: Tensor,
    h0: Tensor | None = None,
    *,
    batch_first: bool = False,
    reverse: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""The ForgetMult recurrence of a QRNN, every step returned.

    .. math::
        h_t = f_t \odot x_t + (1 - f_t) \odot h_{t-1}, \qquad h_{-1} = h_0 \text{ (or zeros)}

    Args:
        f: forget gate, same shape, dtype and device as ``x``. Values are used as given (not clamped).
        x: candidate values, ``(T, B, H)``, ``(B, T, H)`` with ``batch_first``, or unbatched ``(T, H)``.
        h0: initial state ``(B, H)``, or ``(H,)`` for unbatched input; zeros when ``None``.
        batch_first: ``x`` and ``f`` are ``(B, T, H)``. Ignored for unbatched input, as in ``nn.GRU``.
        reverse: walk time from ``T - 1`` down to ``0``; ``h0`` then stands at ``t = T`` and the outputs stay
            in natural time order: ``forget_mult(f, x, h0, reverse=True)`` equals
            ``forget_mult(f.flip(0), x.flip(0), h0).flip(0)``.
        backend: ``"auto"`` (numba on CPU, Triton on CUDA, the reference loop elsewhere), ``"reference"``,
            ``"cpu"`` or ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

    Returns:
        every ``h_t``, same shape and dtype as ``x``. float16 / bfloat16 accumulate in float32.

    Differentiable in ``f``, ``x`` and ``h0``. Equivalent to::

        h = h0
        for t in range(T):  # range(T - 1, -1, -1) with reverse=True
            h = f[t] * x[t] + (1 - f[t]) * h
            out[t] = h
    """
    f, x, h0 = check_inputs(f, x, h0, batch_first, backend)
    unbatched = x.dim() == 2
    if unbatched:
        f, x, batch_first = f.unsqueeze(1), x.unsqueeze(1), False
        h0 = None if h0 is None else h0.unsqueeze(0)
    chosen = resolve_backend(backend, x.device)
    if chosen == "reference":
        out = forget_mult_reference(f, x, h0, batch_first=batch_first, reverse=reverse)
    elif torch.compiler.is_compiling():
        out = torch.ops.torchqrnn.forget_mult(f, x, h0, batch_first, reverse, chosen)
    else:
        out = _ForgetMultFunction.apply(f, x, h0, batch_first, reverse, chosen)
    return out.squeeze(1) if unbatched else out
