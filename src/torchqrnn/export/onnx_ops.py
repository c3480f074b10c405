"""ONNX translations of torchqrnn's custom ops: the recurrence as one ONNX ``Scan`` over time.

The exported graph holds torchqrnn's ops (``torchqrnn::qrnn_pool``, ``torchqrnn::forget_mult``), whose
kernels ONNX cannot run. Each op translates into element-wise ops over the whole sequence, vectorised in
time, around a single ``Scan`` whose body is the one sequential step:

    c_t = a_t + b_t * c_{t-1}          (a Mul and an Add per step)

with ``a = i * z`` and ``b = 1 - f`` (ForgetMult: ``a = f * x``). Padding steps (``lengths``) get ``a = 0``,
``b = 1``, so they carry the state unchanged. ``reverse`` is the Scan's own direction attribute, so the
outputs stay in natural time order; ``T`` and ``B`` stay dynamic. float16 / bfloat16 compute in float32, as
the kernels do. The functions follow ``torch.onnx.export``'s ``custom_translation_table`` convention: tensor
arguments arrive as graph values, the op's bool / float / str arguments as Python values.

This module imports onnxscript; :mod:`torchqrnn.export` imports it only when an ONNX export runs.
"""

from __future__ import annotations

from typing import Any, TypeVar

import onnxscript
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.onnx_types import TensorType

__all__ = ["forget_mult", "qrnn_pool"]

TFloat = TypeVar("TFloat", bound=TensorType)
TInt = TypeVar("TInt", bound=TensorType)
TBool = TypeVar("TBool", bound=TensorType)

# Types the kernels accumulate in float32 (the Scan then runs in float32 too).
_HALF_TYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@onnxscript.script()
def _scan_forward(a: TFloat, b: TFloat, c0: TFloat) -> tuple[TFloat, TFloat]:
    """Every ``c_t = a_t + b_t * c_{t-1}`` (``t = 0 .. T-1``) of time-major ``(T, B, H)`` input, and the
    last one."""

    @onnxscript.graph()
    def step(c_prev, a_t, b_t):
        c = op.Add(a_t, op.Mul(b_t, c_prev))
        c_out = op.Identity(c)
        return c, c_out

    c_n, cells = op.Scan(c0, a, b, body=step, num_scan_inputs=2)
    return cells, c_n


@onnxscript.script()
def _scan_reverse(a: TFloat, b: TFloat, c0: TFloat) -> tuple[TFloat, TFloat]:
    """As :func:`_scan_forward`, walking from ``t = T-1`` down to ``0``; outputs in natural time order."""

    @onnxscript.graph()
    def step(c_prev, a_t, b_t):
        c = op.Add(a_t, op.Mul(b_t, c_prev))
        c_out = op.Identity(c)
        return c, c_out

    c_n, cells = op.Scan(
        c0, a, b, body=step, num_scan_inputs=2, scan_input_directions=[1, 1], scan_output_directions=[1]
    )
    return cells, c_n


def _time_major(t: Any, batch_first: bool) -> Any:
    return op.Transpose(t, perm=[1, 0, 2]) if batch_first else t


def _constant_like(value: float, like: Any) -> Any:
    return op.CastLike(op.Constant(value_float=value), like)


def _recurrence(a: Any, b: Any, h0: Any | None, reverse: bool) -> tuple[Any, Any]:
    """``(cells (T, B, H), c_n (B, H))`` of time-major ``a``, ``b``; zeros for a missing ``h0``."""
    if h0 is None:
        h0 = op.CastLike(op.ConstantOfShape(op.Shape(a, start=1)), a)  # (B, H) zeros
    cells, c_n = (_scan_reverse if reverse else _scan_forward)(a, b, h0)
    return cells, c_n


def _compute_type(value: Any) -> tuple[Any, Any]:
    """``value`` in its compute type (float32 for half types) and a tensor of its own type to cast back to."""
    if value.dtype in _HALF_TYPES:
        return op.Cast(value, to=ir.DataType.FLOAT), value
    return value, None


def _cast_back(value: Any, like: Any | None) -> Any:
    return value if like is None else op.CastLike(value, like)


def qrnn_pool(
    gates: TFloat,
    h0: TFloat | None,
    forget_mask: TBool | None,
    forget_scale: float,
    lengths: TInt | None,
    output_gate: bool,
    input_gate: bool,
    batch_first: bool,
    reverse: bool,
    backend: str,
) -> tuple[TFloat, TFloat, TFloat]:
    """``torchqrnn::qrnn_pool``: ``(output, c_n, cells)``; ``cells`` is the empty tensor without an output
    gate, as in the op (it only feeds the backward pass, so the exporter's optimiser drops it)."""
    gates, original = _compute_type(gates)
    state = None if h0 is None else _compute_type(h0)[0]
    count = 2 + output_gate + input_gate
    blocks = op.Split(_time_major(gates, batch_first), axis=2, num_outputs=count)  # [Z; F; O; I], (T, B, H)
    z = op.Tanh(blocks[0])
    f = op.Sigmoid(blocks[1])
    if forget_scale != 1.0:
        f = op.Mul(f, _constant_like(forget_scale, f))
    if forget_mask is not None:
        f = op.Mul(f, op.CastLike(_time_major(forget_mask, batch_first), f))
    i = op.Sigmoid(blocks[count - 1]) if input_gate else f
    a = op.Mul(i, z)
    b = op.Sub(_constant_like(1.0, f), f)
    valid = None
    if lengths is not None:
        steps = op.Squeeze(op.Shape(a, start=0, end=1))
        time = op.Range(op.Constant(value_int=0), steps, op.Constant(value_int=1))
        # (T, B, 1): step t of sequence b is real; padding gets a = 0, b = 1, so it carries the state
        valid = op.Unsqueeze(
            op.Less(op.Unsqueeze(time, [1]), op.Unsqueeze(op.Cast(lengths, to=ir.DataType.INT64), [0])), [2]
        )
        a = op.Where(valid, a, _constant_like(0.0, a))
        b = op.Where(valid, b, _constant_like(1.0, b))
    cells, c_n = _recurrence(a, b, state, reverse)
    output = op.Mul(op.Sigmoid(blocks[2]), cells) if output_gate else cells
    if valid is not None:
        output = op.Mul(output, op.CastLike(valid, output))  # padding outputs are zero, as in the op
    output = _cast_back(_time_major(output, batch_first), original)
    if output_gate:
        saved = _cast_back(_time_major(cells, batch_first), original)
    else:
        saved = op.CastLike(op.Constant(value_floats=[]), output)
    return output, _cast_back(c_n, original), saved


def forget_mult(
    f: TFloat, x: TFloat, h0: TFloat | None, batch_first: bool, reverse: bool, backend: str
) -> TFloat:
    """``torchqrnn::forget_mult``: every ``h_t = f_t * x_t + (1 - f_t) * h_{t-1}``, in the input's layout."""
    f, original = _compute_type(f)
    x = _compute_type(x)[0]
    state = None if h0 is None else _compute_type(h0)[0]
    f, x = _time_major(f, batch_first), _time_major(x, batch_first)
    cells, _ = _recurrence(op.Mul(f, x), op.Sub(_constant_like(1.0, f), f), state, reverse)
    return _cast_back(_time_major(cells, batch_first), original)
