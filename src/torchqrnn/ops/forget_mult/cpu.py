"""ForgetMult on CPU: numba kernels, forward and backward, both directions, strided inputs.

Importing this module imports numba (the dispatcher does so only when a CPU kernel first runs); the kernels
compile on their first call and are cached on disk (``cache=True``), so later processes load them. How
operands are handed to numba (flat storage views plus a layout table), and how bfloat16 / float16 are read and
written in place (float32 arithmetic, rounded stores), is described in ``ops/_cpu.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._cpu import (
    as_numpy,
    claim,
    compute_scalar,
    flat,
    layout_rows,
    load,
    load_row,
    run_jobs,
    schedule,
    scratch,
    state_array,
    store,
    store_row,
    unit_last_stride,
)
from .._numba_cache import njit

# Rows of the layout table, one per operand.
_F, _X, _OUT, _DOUT, _DF, _DX = range(6)


@njit(cache=True, nogil=True, boundscheck=False)
def _forward_segment(f, x, out, h0, steps, n, layout, b, c0, has_h0, one):  # pragma: no cover - numba
    fo = layout[_F, 0] + b * layout[_F, 2] + c0
    xo = layout[_X, 0] + b * layout[_X, 2] + c0
    oo = layout[_OUT, 0] + b * layout[_OUT, 2] + c0
    fs, xs, os_ = layout[_F, 1], layout[_X, 1], layout[_OUT, 1]
    h = scratch(n, out)
    if has_h0:
        load_row(h, h0[b, c0 : c0 + n], n)
    for _ in range(steps):
        f_row, x_row, out_row = f[fo : fo + n], x[xo : xo + n], out[oo : oo + n]
        for j in range(n):
            # as the equation is written (``one`` in the compute dtype: a float64 literal would widen
            # float32 math): the rewrite h + f (x - h) gives NaN for an infinite state and overflows near
            # the float range where this does not
            f_j = load(f_row[j])
            h_j = f_j * load(x_row[j]) + (one - f_j) * h[j]
            h[j] = h_j
            store(out_row, j, h_j)
        fo += fs
        xo += xs
        oo += os_


@njit(cache=True, nogil=True, boundscheck=False)
def _backward_step(f_row, x_row, h_prev, dout_row, df_row, dx_row, carry, n, one):  # pragma: no cover
    for j in range(n):
        g = load(dout_row[j]) + carry[j]  # g_t = dh_t + (1 - f_{t+1}) g_{t+1}
        f_j = load(f_row[j])
        store(dx_row, j, f_j * g)
        store(df_row, j, (load(x_row[j]) - load(h_prev[j])) * g)
        carry[j] = (one - f_j) * g  # as written, not g - f g (NaN for an infinite g)


@njit(cache=True, nogil=True, boundscheck=False)
def _backward_segment(
    f, x, out, h0, dout, df, dx, dh0, steps, n, layout, b, c0, has_h0, one
):  # pragma: no cover - numba
    # The layout points at the *last* processed row and steps towards the first one.
    fo = layout[_F, 0] + b * layout[_F, 2] + c0
    xo = layout[_X, 0] + b * layout[_X, 2] + c0
    oo = layout[_OUT, 0] + b * layout[_OUT, 2] + c0
    go = layout[_DOUT, 0] + b * layout[_DOUT, 2] + c0
    dfo = layout[_DF, 0] + b * layout[_DF, 2] + c0
    dxo = layout[_DX, 0] + b * layout[_DX, 2] + c0
    fs, xs, os_ = layout[_F, 1], layout[_X, 1], layout[_OUT, 1]
    gs, dfs, dxs = layout[_DOUT, 1], layout[_DF, 1], layout[_DX, 1]
    carry = scratch(n, df)
    for _ in range(steps - 1):
        _backward_step(
            f[fo : fo + n],
            x[xo : xo + n],
            out[oo + os_ : oo + os_ + n],  # h_{t-1} is the next row in this walk
            dout[go : go + n],
            df[dfo : dfo + n],
            dx[dxo : dxo + n],
            carry,
            n,
            one,
        )
        fo += fs
        xo += xs
        oo += os_
        go += gs
        dfo += dfs
        dxo += dxs
    # The first processed step reads h0 (or zeros) as its previous state.
    h_first = h0[b, c0 : c0 + n] if has_h0 else np.zeros(n, dtype=df.dtype)
    _backward_step(
        f[fo : fo + n],
        x[xo : xo + n],
        h_first,
        dout[go : go + n],
        df[dfo : dfo + n],
        dx[dxo : dxo + n],
        carry,
        n,
        one,
    )
    store_row(dh0[b, c0 : c0 + n], carry, n)


@njit(cache=True, nogil=True, boundscheck=False)
def _forward_jobs(
    f, x, out, h0, steps, batch, hidden, chunk, layout, has_h0, one, counter
):  # pragma: no cover
    # one job: a (batch, column chunk) segment over all steps; claimed one at a time (see run_jobs)
    per_batch = (hidden + chunk - 1) // chunk
    while True:
        job = claim(counter)
        if job >= batch * per_batch:
            return
        b, c0 = job // per_batch, (job % per_batch) * chunk
        _forward_segment(f, x, out, h0, steps, min(chunk, hidden - c0), layout, b, c0, has_h0, one)


@njit(cache=True, nogil=True, boundscheck=False)
def _backward_jobs(
    f, x, out, h0, dout, df, dx, dh0, steps, batch, hidden, chunk, layout, has_h0, one, counter
):  # pragma: no cover
    per_batch = (hidden + chunk - 1) // chunk
    while True:
        job = claim(counter)
        if job >= batch * per_batch:
            return
        b, c0 = job // per_batch, (job % per_batch) * chunk
        _backward_segment(
            f, x, out, h0, dout, df, dx, dh0, steps, min(chunk, hidden - c0), layout, b, c0, has_h0, one
        )


# ---------------------------------------------------------------------------------------------------------
# Launchers: tensors in, tensors out. Operands are (T, B, H) views of any strides.


def _flatten_batch(operands: list[Tensor], h0: Tensor | None) -> tuple[list[Tensor], Tensor | None]:
    """Merge B into H when every operand stores a (B, H) row contiguously: longer vector runs, fewer jobs."""
    steps, batch, hidden = operands[0].shape
    if batch > 1 and all(t.stride(1) == hidden and t.stride(2) == 1 for t in operands):
        merged = [
            t.as_strided((steps, 1, batch * hidden), (t.stride(0), batch * hidden, 1)) for t in operands
        ]
        return merged, None if h0 is None else h0.reshape(1, batch * hidden)
    return operands, h0


def forward(f: Tensor, x: Tensor, h0: Tensor | None, out: Tensor, reverse: bool) -> None:
    """Write the ForgetMult of ``(T, B, H)`` views ``f``, ``x`` into ``out`` (same shape, any strides)."""
    steps = x.shape[0]
    dtype = x.dtype  # every float dtype runs in place (half types through their storage)
    target = out if out.dtype == dtype and out.stride(-1) == 1 else torch.empty(out.shape, dtype=dtype)
    operands = [unit_last_stride(f, dtype), unit_last_stride(x, dtype), target]
    operands, state = _flatten_batch(operands, h0)
    _, batch_k, hidden_k = operands[0].shape
    threads, chunk = schedule(steps, batch_k, hidden_k)
    args = (
        *(flat(t) for t in operands),
        state_array(state, dtype),
        steps,
        batch_k,
        hidden_k,
        chunk,
        layout_rows(operands, steps, walk_backwards=reverse),
        state is not None,
        compute_scalar(dtype, 1.0),
    )
    run_jobs(_forward_jobs, args, threads)
    if target is not out:
        out.copy_(target)


def backward(
    dout: Tensor,
    f: Tensor,
    x: Tensor,
    out: Tensor,
    h0: Tensor | None,
    reverse: bool,
    df: Tensor,
    dx: Tensor,
    dh0: Tensor,
) -> None:
    """Write the gradients of ForgetMult into ``df``, ``dx`` (``(T, B, H)`` views) and ``dh0`` (``(B, H)``).

    ``out`` is the forward result and ``dout`` the incoming gradient, both of any strides (stride 0 too).
    """
    steps = x.shape[0]
    dtype = x.dtype  # every float dtype runs in place (half types through their storage)
    targets = [
        t if t.dtype == dtype and t.stride(-1) == 1 else torch.empty(t.shape, dtype=dtype)
        for t in (df, dx, dh0)
    ]
    if not targets[2].is_contiguous():
        targets[2] = torch.empty(dh0.shape, dtype=dtype)
    operands = [
        unit_last_stride(f, dtype),
        unit_last_stride(x, dtype),
        unit_last_stride(out, dtype),
        unit_last_stride(dout, dtype),
        targets[0],
        targets[1],
    ]
    operands, state = _flatten_batch(operands, h0)
    grad_state = targets[2].view(operands[0].shape[1], operands[0].shape[2])
    _, batch_k, hidden_k = operands[0].shape
    threads, chunk = schedule(steps, batch_k, hidden_k)
    args = (
        flat(operands[_F]),
        flat(operands[_X]),
        flat(operands[_OUT]),
        state_array(state, dtype),
        flat(operands[_DOUT]),
        flat(operands[_DF]),
        flat(operands[_DX]),
        as_numpy(grad_state),
        steps,
        batch_k,
        hidden_k,
        chunk,
        layout_rows(operands, steps, walk_backwards=not reverse),
        state is not None,
        compute_scalar(dtype, 1.0),
    )
    run_jobs(_backward_jobs, args, threads)
    for result, target in zip((df, dx, dh0), targets, strict=True):
        if target is not result:
            result.copy_(target)
