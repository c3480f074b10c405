"""ForgetMult written with torch's ``scan`` higher-order op: its decomposition for ``torch.onnx.export``.

The kernels are opaque to ONNX. This form is what an exporter sees when it decomposes the op: element-wise
ops over the whole sequence, vectorised in time, around one ``scan`` whose body is the sequential step
``c_t = a_t + b_t * c_{t-1}`` (here ``a = f * x``, ``b = 1 - f``). torch.onnx's exporter translates ``scan``
to one ONNX ``Scan``, so the exported graph runs any ``T`` and ``B``.

It is registered in torch's decomposition table, which ``torch.onnx.export`` applies to every op it has no
ONNX translation for (``torchqrnn.export.to_onnx`` brings its own, which then wins). The op's fake
implementation is registered as its meta function too: FakeTensor prefers a meta over a decomposition, so
``torch.compile`` and ``torch.export`` keep tracing the op through its fake implementation, and their
programs keep the op and its kernels; Inductor gets the op as an explicit fallback kernel (see
:mod:`torchqrnn.ops._decomposition`). Eager calls never look at either table.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._decomposition import register_decomposition
from .._dispatch import time_major
from . import _forget_mult_fake  # the dispatcher imports this module last, once the op is defined

__all__ = ["forget_mult_scan", "linear_recurrence"]

_HALF_TYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in: float32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in _HALF_TYPES else dtype


def _step(c: Tensor, a_t: Tensor, b_t: Tensor, *sizes: torch.SymInt) -> tuple[Tensor, Tensor]:
    c = a_t + b_t * c
    return c, c.clone()  # scan's outputs must not alias its carry


def linear_recurrence(a: Tensor, b: Tensor, c0: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
    """Every ``c_t = a_t + b_t * c_{t-1}`` of time-major ``(T, B, H)`` ``a`` and ``b``, and the last one:
    ``(cells (T, B, H), c_n (B, H))``. ``c0`` is the state before the first step (zeros when ``None``);
    ``reverse`` walks from ``t = T - 1`` down to ``0``, the cells staying in natural time order."""
    # here: only an export needs it, and older torch lacks it
    from torch._higher_order_ops.scan import scan_op

    if c0 is None:
        c0 = a.new_zeros(a.shape[1:])
    if a.shape[0] == 0:  # scan needs a step to run; an empty sequence keeps its state
        return a.new_empty(a.shape), c0
    if reverse:
        a, b = a.flip(0), b.flip(0)
    # The dynamic sizes of a step (the batch) go in as the scan's extra inputs: AOTInductor turns the scan
    # into a while_loop whose output buffer it sizes from the symbols it finds among them.
    symbolic = tuple(size for size in a.shape[1:] if isinstance(size, torch.SymInt))
    c_n, cells = scan_op(_step, [c0], [a, b], symbolic)
    return (cells.flip(0) if reverse else cells), c_n


def forget_mult_scan(
    f: Tensor, x: Tensor, h0: Tensor | None, batch_first: bool, reverse: bool, backend: str
) -> Tensor:
    """``torchqrnn::forget_mult`` (3-D ``f``, ``x`` in the caller's layout) as element-wise ops and one
    ``scan``; ``backend`` is ignored. Half types compute in float32, as the kernels do."""
    dtype = compute_dtype(x.dtype)
    f_t, x_t = time_major(f, batch_first).to(dtype), time_major(x, batch_first).to(dtype)
    cells, _ = linear_recurrence(f_t * x_t, 1 - f_t, None if h0 is None else h0.to(dtype), reverse)
    return time_major(cells, batch_first).to(x.dtype).contiguous()


register_decomposition(torch.ops.torchqrnn.forget_mult.default, forget_mult_scan, _forget_mult_fake)
