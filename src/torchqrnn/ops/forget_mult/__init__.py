"""ForgetMult, the QRNN recurrence: validation, the one backend dispatcher, autograd, ``torch.library`` op.

Data flows one way: :func:`forget_mult` checks its arguments, brings them to 3-D, picks a backend and calls
either the plain reference loop (PyTorch autograd) or the ``torchqrnn::forget_mult`` custom op, whose
implementation runs the chosen kernel module (``cpu`` = numba, ``triton``) and whose registered backward
calls ``torchqrnn::forget_mult_backward``. Both ops have fake implementations, so ``torch.compile`` traces
through them without graph breaks. Kernel modules are imported on first use, never at import time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._autograd import BackwardUnderTransforms, fold, foldable, reference_backward, transformed, unfold
from .._dispatch import (
    BACKENDS,
    SUPPORTED_DTYPES,
    check_backend,
    check_state,
    check_tensor,
    resolve_backend,
    shape_str,
    time_major,
)
from .._dispatch import kernel_module as _kernel_module
from .reference import forget_mult_reference

__all__ = ["BACKENDS", "forget_mult", "forget_mult_reference", "resolve_backend"]


def _state_shape(x: Tensor, batch_first: bool) -> tuple[int, int]:
    return (x.shape[0] if batch_first else x.shape[1], x.shape[2])


def check_inputs(
    f: object, x: object, h0: object, batch_first: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate the public arguments; raise naming the argument, the expected and the actual value.

    Returns ``h0`` with the shape of one step of ``x`` (``(B, *)``, or ``(H,)`` unbatched): a leading 1
    (a layer's ``h_n``, ``(1, B, *)``) is dropped."""
    x = check_tensor("forget_mult", "x", x)
    f = check_tensor("forget_mult", "f", f)
    if x.dim() < 2:
        raise ValueError(
            "forget_mult: expected x to be 2-D (T, H) unbatched, or (T, B, *) / (B, T, *) with any trailing "
            f"dimensions, got a {x.dim()}-D tensor of shape {shape_str(x)}"
        )
    if f.shape != x.shape:
        raise ValueError(f"forget_mult: expected f to have the shape of x {shape_str(x)}, got {shape_str(f)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            "forget_mult: expected x to be float32, float64, bfloat16 or float16, got " + str(x.dtype)
        )
    if f.dtype != x.dtype:
        raise RuntimeError(f"forget_mult: expected f to have the dtype of x ({x.dtype}), got {f.dtype}")
    if f.device != x.device:
        raise RuntimeError(f"forget_mult: expected f on the device of x ({x.device}), got {f.device}")
    if h0 is not None:
        given = check_tensor("forget_mult", "h0", h0)
        step = x.shape[:1] + x.shape[2:] if batch_first and x.dim() > 2 else x.shape[1:]
        # (1, B, *): a layer's h_n, as salesforce's ForgetMult took it
        leading_one = given.dim() == len(step) + 1 and given.shape[0] == 1
        h0 = given.squeeze(0) if leading_one else given
        if h0.shape != step:
            layout = "unbatched" if x.dim() == 2 else f"batch_first={batch_first}"
            raise ValueError(
                f"forget_mult: expected h0 of shape {tuple(step)} or {(1, *step)} for x of shape "
                f"{shape_str(x)} ({layout}), got {shape_str(given)}"
            )
        h0 = check_state("forget_mult", "h0", h0, tuple(step), x, lambda: shape_str(x))
    check_backend("forget_mult", backend)
    return f, x, h0


def kernel_module(backend: str) -> Any:
    return _kernel_module(__name__, backend)


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
    if x.numel():  # the kernels see non-empty tensors only
        kernel_module(backend).forward(
            time_major(f, batch_first), time_major(x, batch_first), h0, time_major(out, batch_first), reverse
        )
    return out


torch.library.impl("torchqrnn::forget_mult", "CompositeExplicitAutograd", _forget_mult_impl)


@torch.library.register_fake("torchqrnn::forget_mult")
def _forget_mult_fake(
    f: Tensor, x: Tensor, h0: Tensor | None, batch_first: bool, reverse: bool, backend: str
) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _new_grads(x: Tensor, batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    new = functools.partial(torch.empty, dtype=x.dtype, device=x.device)
    return new(x.shape), new(x.shape), new(_state_shape(x, batch_first))


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
    df, dx, dh0 = _new_grads(x, batch_first)
    if x.numel() == 0:  # the kernels see non-empty tensors only
        dh0.zero_()
        return df, dx, dh0
    kernel_module(backend).backward(
        *(time_major(t, batch_first) for t in (grad, f, x, out)),
        h0,
        reverse,
        time_major(df, batch_first),
        time_major(dx, batch_first),
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
    return _new_grads(x, batch_first)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    f, x, h0, batch_first, reverse, backend = inputs
    ctx.save_for_backward(f, x, output, h0)
    ctx.batch_first, ctx.reverse, ctx.backend = batch_first, reverse, backend


def _backward_through(backward: Callable[..., tuple[Tensor, Tensor, Tensor]], ctx: Any, grad: Tensor):
    f, x, out, h0 = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the kernels' backward is first order only
        return (
            *reference_backward(
                lambda: forget_mult_reference(f, x, h0, batch_first=ctx.batch_first, reverse=ctx.reverse),
                (f, x, h0),
                ctx.needs_input_grad[:3],
                (grad,),
            ),
            None, None, None,
        )  # fmt: skip
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
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # (not once_differentiable, which cuts the graph silently when grad does not require grad)
        return _backward_through(_forget_mult_backward_impl, ctx, grad)


class _ForgetMultTransformable(torch.autograd.Function):
    """The kernels under ``torch.func``: ``vmap`` (with at most one ``grad`` level, as per-sample
    gradients use), in ``setup_context`` form with a batching rule that folds the mapped dims into the batch
    dim (exact: the batch rows are independent). The backward runs :class:`_ForgetMultBackwardTransformable`,
    which batches the same way."""

    @staticmethod
    def forward(f: Tensor, x: Tensor, h0: Tensor | None, batch_first: bool, reverse: bool, backend: str):
        return _forget_mult_impl(f, x, h0, batch_first, reverse, backend)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        f, x, out, h0 = ctx.saved_tensors
        df, dx, dh0 = _ForgetMultBackwardTransformable.apply(
            grad, f, x, out, h0, ctx.batch_first, ctx.reverse, ctx.backend
        )
        return df, dx, (dh0 if h0 is not None else None), None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], f, x, h0, batch_first, reverse, backend):
        size, batch = info.batch_size, (0 if batch_first else 1)
        out = _ForgetMultTransformable.apply(
            fold(f, in_dims[0], size, batch), fold(x, in_dims[1], size, batch), fold(h0, in_dims[2], size, 0),
            batch_first, reverse, backend,
        )  # fmt: skip
        return unfold(out, size, batch), batch


class _ForgetMultBackwardTransformable(BackwardUnderTransforms):
    """The kernels' backward under ``torch.func``, batched as :class:`_ForgetMultTransformable`."""

    op = "forget_mult"

    @staticmethod
    def forward(grad, f, x, out, h0, batch_first, reverse, backend) -> tuple[Tensor, Tensor, Tensor]:
        return _forget_mult_backward_impl(grad, f, x, out, h0, batch_first, reverse, backend)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], grad, f, x, out, h0, batch_first, reverse, backend):
        size, batch = info.batch_size, (0 if batch_first else 1)
        folded = [fold(t, d, size, batch) for t, d in zip((grad, f, x, out), in_dims, strict=False)]
        df, dx, dh0 = _ForgetMultBackwardTransformable.apply(
            *folded, fold(h0, in_dims[4], size, 0), batch_first, reverse, backend
        )
        return (unfold(df, size, batch), unfold(dx, size, batch), unfold(dh0, size, 0)), (batch, batch, 0)


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
        x: candidate values, ``(T, B, H)``, ``(B, T, H)`` with ``batch_first``, or unbatched ``(T, H)``. Any
            trailing dimensions are allowed, ``(T, B, *)`` (the recurrence is element-wise: the kernels see
            the view ``(T, B, prod(*))``, a copy only where the trailing dimensions cannot be merged).
        h0: initial state, the shape of one step of ``x``: ``(B, H)`` (``(B, *)``), or ``(H,)`` for unbatched
            input; the same with a leading 1 (``(1, B, H)``, what a layer returns as ``h_n``) is accepted
            too. Zeros when ``None``.
        batch_first: ``x`` and ``f`` are ``(B, T, H)``. Ignored for unbatched input, as in ``nn.GRU``.
        reverse: walk time from ``T - 1`` down to ``0``; ``h0`` then stands at ``t = T`` and the outputs stay
            in natural time order: ``forget_mult(f, x, h0, reverse=True)`` equals
            ``forget_mult(f.flip(0), x.flip(0), h0).flip(0)``.
        backend: ``"auto"`` (numba on CPU, Triton on CUDA, the reference loop elsewhere), ``"reference"``,
            ``"cpu"`` or ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

    Returns:
        every ``h_t``, same shape and dtype as ``x``. float16 / bfloat16 accumulate in float32.

    Differentiable in ``f``, ``x`` and ``h0``, to any order (double backward recomputes through the
    reference loop), and under ``torch.func`` transforms (``vmap`` and per-sample gradients run the kernels,
    batched; ``jvp`` and nested ``grad`` the reference loop). Equivalent to::

        h = h0
        for t in range(T):  # range(T - 1, -1, -1) with reverse=True
            h = f[t] * x[t] + (1 - f[t]) * h
            out[t] = h
    """
    f, x, h0 = check_inputs(f, x, h0, batch_first, backend)
    full_shape = x.shape
    if x.dim() > 3:  # (T, B, *): the recurrence is element-wise, so the kernels see (T, B, prod(*)), a view
        f, x = f.flatten(2), x.flatten(2)
        h0 = None if h0 is None else h0.flatten(1)
    unbatched = x.dim() == 2
    if unbatched:
        f, x, batch_first = f.unsqueeze(1), x.unsqueeze(1), False
        h0 = None if h0 is None else h0.unsqueeze(0)
    chosen = resolve_backend(backend, x.device)
    if chosen == "reference" or (transformed() and not foldable()):  # see ops/_autograd.py
        out = forget_mult_reference(f, x, h0, batch_first=batch_first, reverse=reverse)
    elif transformed():
        out = _ForgetMultTransformable.apply(f, x, h0, batch_first, reverse, chosen)
    elif torch.compiler.is_compiling():
        out = torch.ops.torchqrnn.forget_mult(f, x, h0, batch_first, reverse, chosen)
    else:
        out = _ForgetMultFunction.apply(f, x, h0, batch_first, reverse, chosen)
    if unbatched:
        return out.squeeze(1)
    return out.unflatten(2, full_shape[2:]) if len(full_shape) > 3 else out


# Last: the op in torch ops and one scan, registered as its decomposition for torch.onnx.export.
from . import scan as _scan  # noqa: E402, F401
