"""QRNN pooling, a layer's element-wise half, fused: validation, dispatch, autograd, ``torch.library`` op.

From the projection's pre-activation gates ``[Z; F; O; I]`` (each ``H`` wide, ``O`` only with an output gate,
``I`` only with an input gate) it computes, in one pass per direction of autograd::

    z = tanh(Z)   f = sigmoid(F) * forget_scale * forget_mask   o = sigmoid(O)
    i = sigmoid(I) if input_gate else f
    c_t = i_t * z_t + (1 - f_t) * c_{t-1}        (f-pooling when i is f; ifo-pooling with an input gate)
    h_t = o_t * c_t if output_gate else c_t

Variable lengths: steps at or beyond ``lengths[b]`` are padding; they leave the state untouched and output
zeros, so the final state is each sequence's own and the reverse direction starts at each sequence's end.
Data flows as for ForgetMult: :func:`qrnn_pool` validates and dispatches to the plain reference (PyTorch
autograd) or to the ``torchqrnn::qrnn_pool`` op, whose kernels are imported on first use.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .._autograd import BackwardUnderTransforms, fold, foldable, reference_backward, transformed, unfold
from .._dispatch import (
    SUPPORTED_DTYPES,
    check_backend,
    check_state,
    check_tensor,
    kernel_module,
    resolve_backend,
    shape_str,
    time_major,
)
from .reference import qrnn_pool_reference

__all__ = ["qrnn_pool", "qrnn_pool_reference"]

# The kernel backends this op has (a module of that name beside this file).
KERNELS = ("cpu", "triton")


def gate_count(output_gate: bool, input_gate: bool) -> int:
    return 2 + output_gate + input_gate


def _check_inputs(
    gates: object,
    h0: object,
    forget_mask: object,
    lengths: object,
    output_gate: bool,
    input_gate: bool,
    batch_first: bool,
    backend: str,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    owner = "qrnn_pool"
    gates = check_tensor(owner, "gates", gates)
    if gates.dim() != 3:
        raise ValueError(f"{owner}: expected gates to be 3-D (T, B, G*H), got shape {shape_str(gates)}")
    if gates.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            f"{owner}: expected gates to be float32, float64, bfloat16 or float16, got {gates.dtype}"
        )
    count = gate_count(output_gate, input_gate)
    if gates.shape[-1] % count:
        raise ValueError(
            f"{owner}: expected the last dim of gates to be a multiple of {count} (one block per gate), "
            f"got {gates.shape[-1]}"
        )
    hidden = gates.shape[-1] // count
    steps, batch = (gates.shape[1], gates.shape[0]) if batch_first else gates.shape[:2]
    if h0 is not None:
        h0 = check_state(
            owner, "h0", h0, (batch, hidden), gates, lambda: f"gates of shape {shape_str(gates)}"
        )
    if forget_mask is not None:
        forget_mask = check_tensor(owner, "forget_mask", forget_mask)
        expected = (*gates.shape[:2], hidden)
        if tuple(forget_mask.shape) != expected:
            raise ValueError(
                f"{owner}: expected forget_mask of shape {expected}, got {shape_str(forget_mask)}"
            )
        if forget_mask.dtype not in (torch.bool, torch.uint8):
            raise RuntimeError(f"{owner}: expected forget_mask of dtype torch.bool, got {forget_mask.dtype}")
    if lengths is not None:
        lengths = check_tensor(owner, "lengths", lengths)
        if lengths.shape != (batch,) or lengths.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{owner}: expected lengths to be an int64 (or int32) tensor of shape ({batch},), "
                f"got {lengths.dtype} of shape {shape_str(lengths)}"
            )
        # (vmap's rule checks its own; nothing to read while compiling)
        if not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(lengths):
            check_length_values(lengths, steps)
    check_backend(owner, backend)
    return gates, h0, forget_mask, lengths


def check_length_values(lengths: Tensor | None, steps: int) -> None:
    """Every length in ``[0, steps]``.

    The check reads the values on the host: done for host lengths (a PackedSequence's, or those a ``vmap``
    rule unwrapped), skipped for device lengths (a host read would synchronise, and break CUDA-graph
    capture) and while compiling. The kernels clamp lengths into ``[0, T]`` either way.
    """
    if (
        lengths is not None
        and lengths.numel()
        and lengths.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and (int(lengths.min()) < 0 or int(lengths.max()) > steps)
    ):
        raise ValueError(f"qrnn_pool: expected lengths in [0, {steps}], got {lengths.tolist()}")


# ---------------------------------------------------------------------------------------------------------
# The custom ops. ``cells`` is returned so that it can be saved for the backward pass; it is the empty
# tensor when there is no output gate, since the cell states are then the output itself.

_FORWARD_SCHEMA = (
    "(Tensor gates, Tensor? h0, Tensor? forget_mask, float forget_scale, Tensor? lengths, bool output_gate, "
    "bool input_gate, bool batch_first, bool reverse, str backend) -> (Tensor, Tensor, Tensor)"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor? grad_hn, Tensor gates, Tensor cells, Tensor? h0, Tensor? forget_mask, "
    "float forget_scale, Tensor? lengths, bool output_gate, bool input_gate, bool batch_first, bool reverse, "
    "str backend) -> (Tensor, Tensor)"
)
torch.library.define("torchqrnn::qrnn_pool", _FORWARD_SCHEMA)
torch.library.define("torchqrnn::qrnn_pool_backward", _BACKWARD_SCHEMA)


def _forward_shapes(gates: Tensor, output_gate: bool, input_gate: bool, batch_first: bool):
    hidden = gates.shape[-1] // gate_count(output_gate, input_gate)
    batch = gates.shape[0] if batch_first else gates.shape[1]
    return (*gates.shape[:2], hidden), (batch, hidden)


def _new_outputs(
    gates: Tensor, output_gate: bool, input_gate: bool, batch_first: bool, store_cells: bool = True
):
    """``(output, final state, cells)``; cells is empty without an output gate (the output is the cells) and
    where they are not stored."""
    out_shape, state_shape = _forward_shapes(gates, output_gate, input_gate, batch_first)
    new = functools.partial(torch.empty, dtype=gates.dtype, device=gates.device)
    return new(out_shape), new(state_shape), new(out_shape if output_gate and store_cells else (0,))


def _new_grads(gates: Tensor, output_gate: bool, input_gate: bool, batch_first: bool):
    _, state_shape = _forward_shapes(gates, output_gate, input_gate, batch_first)
    new = functools.partial(torch.empty, dtype=gates.dtype, device=gates.device)
    return new(gates.shape), new(state_shape)


def _qrnn_pool_impl(
    gates: Tensor,
    h0: Tensor | None,
    forget_mask: Tensor | None,
    forget_scale: float,
    lengths: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    batch_first: bool,
    reverse: bool,
    backend: str,
    store_cells: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward op; ``store_cells=False`` (inference: nothing will read them) returns the empty
    placeholder for the cell states, which the kernels then do not store."""
    out, hn, cells = _new_outputs(gates, output_gate, input_gate, batch_first, store_cells)
    if out.numel() == 0:  # the kernels see non-empty tensors only; an empty sequence keeps its state
        hn.copy_(h0) if h0 is not None else hn.zero_()
        return out, hn, cells
    kernel_module(__name__, backend).forward(
        time_major(gates, batch_first),
        h0,
        None if forget_mask is None else time_major(forget_mask, batch_first),
        forget_scale,
        lengths,
        output_gate,
        input_gate,
        reverse,
        time_major(out, batch_first),
        (time_major(cells, batch_first) if output_gate else cells) if store_cells else None,
        hn,
    )
    return out, hn, cells


def _qrnn_pool_fake(
    gates: Tensor,
    h0: Tensor | None,
    forget_mask: Tensor | None,
    forget_scale: float,
    lengths: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    batch_first: bool,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _new_outputs(gates, output_gate, input_gate, batch_first)


def _qrnn_pool_backward_impl(
    grad_out: Tensor,
    grad_hn: Tensor | None,
    gates: Tensor,
    cells: Tensor,
    h0: Tensor | None,
    forget_mask: Tensor | None,
    forget_scale: float,
    lengths: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    batch_first: bool,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    dgates, dh0 = _new_grads(gates, output_gate, input_gate, batch_first)
    if cells.numel() == 0:  # nothing to walk: the final state was the initial one
        dgates.zero_()
        dh0.copy_(grad_hn) if grad_hn is not None else dh0.zero_()
        return dgates, dh0
    kernel_module(__name__, backend).backward(
        time_major(grad_out, batch_first),
        grad_hn,
        time_major(gates, batch_first),
        time_major(cells, batch_first),
        h0,
        None if forget_mask is None else time_major(forget_mask, batch_first),
        forget_scale,
        lengths,
        output_gate,
        input_gate,
        reverse,
        time_major(dgates, batch_first),
        dh0,
    )
    return dgates, dh0


def _qrnn_pool_backward_fake(grad_out: Tensor, grad_hn: Tensor | None, gates: Tensor, *rest: Any):
    output_gate, input_gate, batch_first = rest[5], rest[6], rest[7]
    return _new_grads(gates, output_gate, input_gate, batch_first)


torch.library.impl("torchqrnn::qrnn_pool", "CompositeExplicitAutograd", _qrnn_pool_impl)
torch.library.impl("torchqrnn::qrnn_pool_backward", "CompositeExplicitAutograd", _qrnn_pool_backward_impl)
torch.library.register_fake("torchqrnn::qrnn_pool", _qrnn_pool_fake)
torch.library.register_fake("torchqrnn::qrnn_pool_backward", _qrnn_pool_backward_fake)


def _save(ctx: Any, inputs: tuple[Any, ...], out: Tensor, cells: Tensor) -> None:
    gates, h0, forget_mask, forget_scale, lengths, output_gate, input_gate, batch_first, reverse, backend = (
        inputs
    )
    ctx.save_for_backward(gates, cells if output_gate else out, h0, forget_mask, lengths)
    ctx.options = (forget_scale, output_gate, input_gate, batch_first, reverse, backend)


def _grads(backward: Any, ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None) -> tuple[Any, ...]:
    gates, cells, h0, forget_mask, lengths = ctx.saved_tensors
    forget_scale, output_gate, input_gate, batch_first, reverse, backend = ctx.options
    if torch.is_grad_enabled():  # create_graph=True: the kernels' backward is first order only
        reference = functools.partial(
            qrnn_pool_reference, gates, h0, output_gate=output_gate, input_gate=input_gate,
            forget_mask=forget_mask, forget_scale=forget_scale, lengths=lengths, batch_first=batch_first,
            reverse=reverse,
        )  # fmt: skip
        grads = reference_backward(reference, (gates, h0), ctx.needs_input_grad[:2], (grad_out, grad_hn))
        return (*grads, *(None,) * 8)
    if grad_out is None:  # only the final state was used: a zero gradient read at stride 0, never allocated
        out_shape, _ = _forward_shapes(gates, output_gate, input_gate, batch_first)
        grad_out = gates.new_zeros(out_shape[-1]).expand(out_shape)
    dgates, dh0 = backward(
        grad_out, grad_hn, gates, cells, h0, forget_mask, forget_scale, lengths, output_gate, input_gate,
        batch_first, reverse, backend,
    )  # fmt: skip
    return (dgates, dh0 if h0 is not None else None) + (None,) * 8


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    _save(ctx, inputs, output[0], output[2])


def _op_backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor, grad_cells: Tensor) -> tuple[Any, ...]:
    return _grads(torch.ops.torchqrnn.qrnn_pool_backward, ctx, grad_out, grad_hn)


torch.library.register_autograd("torchqrnn::qrnn_pool", _op_backward, setup_context=_setup_context)


class _QRNNPoolFunction(torch.autograd.Function):
    """Eager twin of the op's autograd registration: the same kernels without the per-call dispatch to
    registered Python kernels, and without materialising zero gradients for unused outputs. Still needed
    (Intel Xeon, 2 threads, forward+backward, the op's route against this one): 1.33-1.44x the time at
    (T, B, H) = (1, 1, 32) and (8, 4, 64) (about 75 us a call more), and 1.36-1.38x at (105, 20, 640) when
    only ``h_n`` is used; on par (0.95-0.97x) at (105, 20, 640) with both outputs used."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, Tensor]:
        out, hn, cells = _qrnn_pool_impl(*inputs)
        _save(ctx, inputs, out, cells)
        ctx.set_materialize_grads(False)
        return out, hn

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None) -> tuple[Any, ...]:
        # (not once_differentiable, which cuts the graph silently when grad does not require grad)
        return _grads(_qrnn_pool_backward_impl, ctx, grad_out, grad_hn)


class _QRNNPoolTransformable(torch.autograd.Function):
    """The kernels under ``torch.func`` (``vmap``, with at most one ``grad`` level): ``setup_context`` form,
    a batching rule that folds the mapped dims into the batch dim (exact: the batch rows are independent),
    and a backward through :class:`_QRNNPoolBackwardTransformable`, batched the same way."""

    @staticmethod
    def forward(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
        return _qrnn_pool_impl(*inputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        _save(ctx, inputs, output[0], output[2])
        ctx.mark_non_differentiable(output[2])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_hn: Tensor, grad_cells: Tensor) -> tuple[Any, ...]:
        gates, cells, h0, forget_mask, lengths = ctx.saved_tensors
        dgates, dh0 = _QRNNPoolBackwardTransformable.apply(
            grad_out, grad_hn, gates, cells, h0, forget_mask, *ctx.options[:1], lengths, *ctx.options[1:]
        )
        return (dgates, dh0 if h0 is not None else None) + (None,) * 8

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], gates, h0, forget_mask, forget_scale, lengths, *options):
        output_gate, batch_first = (
            options[0],
            options[2],
        )  # options: output_gate, input_gate, batch_first, ...
        size, batch = info.batch_size, (0 if batch_first else 1)
        sample = gates if in_dims[0] is None else gates.select(in_dims[0], 0)  # one sample's (T, B, G*H)
        check_length_values(lengths, sample.shape[1 if batch_first else 0])
        out, hn, cells = _QRNNPoolTransformable.apply(
            fold(gates, in_dims[0], size, batch),
            fold(h0, in_dims[1], size, 0),
            fold(forget_mask, in_dims[2], size, batch),
            forget_scale,
            fold(lengths, in_dims[4], size, 0),
            *options,
        )
        if not output_gate:  # cells is the empty placeholder: nothing mapped
            return (unfold(out, size, batch), unfold(hn, size, 0), cells), (batch, 0, None)
        return (unfold(out, size, batch), unfold(hn, size, 0), unfold(cells, size, batch)), (batch, 0, batch)


class _QRNNPoolBackwardTransformable(BackwardUnderTransforms):
    """The kernels' backward under ``torch.func``, batched as :class:`_QRNNPoolTransformable`."""

    op = "qrnn_pool"

    @staticmethod
    def forward(*inputs: Any) -> tuple[Tensor, Tensor]:
        return _qrnn_pool_backward_impl(*inputs)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], grad_out, grad_hn, gates, cells, h0, forget_mask, *rest):
        # rest: forget_scale, lengths, output_gate, input_gate, batch_first, reverse, backend; cells is the
        # saved cells (or the output itself without an output gate): full size either way
        size, batch = info.batch_size, (0 if rest[4] else 1)
        dgates, dh0 = _QRNNPoolBackwardTransformable.apply(
            fold(grad_out, in_dims[0], size, batch),
            fold(grad_hn, in_dims[1], size, 0),
            fold(gates, in_dims[2], size, batch),
            fold(cells, in_dims[3], size, batch),
            fold(h0, in_dims[4], size, 0),
            fold(forget_mask, in_dims[5], size, batch),
            rest[0],
            fold(rest[1], in_dims[7], size, 0),
            *rest[2:],
        )
        return (unfold(dgates, size, batch), unfold(dh0, size, 0)), (batch, 0)


def qrnn_pool(
    gates: Tensor,
    h0: Tensor | None = None,
    *,
    output_gate: bool = True,
    input_gate: bool = False,
    forget_mask: Tensor | None = None,
    forget_scale: float = 1.0,
    lengths: Tensor | None = None,
    batch_first: bool = False,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    r"""The element-wise part of a QRNN layer, from pre-activation gates to outputs, fused.

    Args:
        gates: ``(T, B, G*H)`` (``(B, T, G*H)`` with ``batch_first``): the projection's output, gate blocks
            in the order ``[Z; F; O; I]`` (``O`` with ``output_gate``, ``I`` with ``input_gate``).
        h0: initial cell state ``(B, H)``; zeros when ``None``.
        output_gate: ``h = sigmoid(O) * c`` (fo-pooling) rather than ``h = c``.
        input_gate: ``c_t = sigmoid(I) * z + (1 - f) * c_{t-1}`` (ifo-pooling) rather than ``i = f``.
        forget_mask: zoneout's keep mask for ``f`` (bool, the shape of the output), or ``None``.
        forget_scale: multiplies ``f`` (evaluation-mode zoneout: ``1 - p``).
        lengths: ``(B,)`` int64 valid steps per sequence; later steps are padding (zero output, state kept).
        reverse: walk time from ``T - 1`` down to ``0``.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``(output, last_cell_state)``: ``(T, B, H)`` (or ``(B, T, H)``) and ``(B, H)``: the cell state after
        each sequence's last real step (its first step for ``reverse``), not the gated output.

    Differentiable in ``gates`` and ``h0`` to any order (double backward recomputes through the reference),
    and under ``torch.func`` transforms (``vmap`` and per-sample gradients run the kernels, batched; ``jvp``
    and nested ``grad`` the reference).
    """
    gates, h0, forget_mask, lengths = _check_inputs(
        gates, h0, forget_mask, lengths, output_gate, input_gate, batch_first, backend
    )
    chosen = resolve_backend(backend, gates.device, KERNELS)
    options = (output_gate, input_gate, batch_first, reverse)
    if chosen == "reference" or (transformed() and not foldable()):  # see ops/_autograd.py
        return qrnn_pool_reference(
            gates,
            h0,
            output_gate=output_gate,
            input_gate=input_gate,
            forget_mask=forget_mask,
            forget_scale=forget_scale,
            lengths=lengths,
            batch_first=batch_first,
            reverse=reverse,
        )
    if transformed():
        out, hn, _ = _QRNNPoolTransformable.apply(
            gates, h0, forget_mask, forget_scale, lengths, *options, chosen
        )
        return out, hn
    if torch.compiler.is_compiling():
        out, hn, _ = torch.ops.torchqrnn.qrnn_pool(
            gates, h0, forget_mask, forget_scale, lengths, *options, chosen
        )
        return out, hn
    if not torch.is_grad_enabled() or not (gates.requires_grad or (h0 is not None and h0.requires_grad)):
        # inference (streaming above all) skips the autograd machinery: nothing is saved or recorded, and
        # the cell states, which only the backward pass reads, are not stored
        out, hn, _ = _qrnn_pool_impl(
            gates, h0, forget_mask, forget_scale, lengths, *options, chosen, store_cells=False
        )
        return out, hn
    return _QRNNPoolFunction.apply(gates, h0, forget_mask, forget_scale, lengths, *options, chosen)


# Last: the op in torch ops and one scan, registered as its decomposition for torch.onnx.export.
from . import scan as _scan  # noqa: E402, F401
