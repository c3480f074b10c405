"""The fused QRNN pooling on CPU: numba kernels, one pass forward and one pass backward.

Forward reads the pre-activation gates once and writes the output and, with an output gate, the cell states
that the backward pass needs. Backward re-computes the activations from the gates (cheaper than storing
them) and writes the gradient of the gates in one pass, walking time the other way. Operands are handed to
numba as described in ``ops/_cpu.py``. Arithmetic avoids Python number literals: in numba ``1 - x`` with a
float32 ``x`` is float64, which would halve the vector width; ``one`` is passed in the kernel's dtype.
``error_model="numpy"`` drops numba's division-by-zero check, whose branch kept the rational ``tanh`` (a
division) from vectorising. No fast-math flags: with them LLVM may fuse or approximate differently in a
loop's vector body and its remainder, and in a kernel compiled in the process and the same kernel loaded
from numba's cache (seen: bits of the float32 results changed with the cache's state). Every result is
fixed by the source alone; the activations fuse their multiply-adds explicitly (``fma`` in ``_cpu.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._cpu import (
    NO_STATE,
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
    sigmoid,
    state_array,
    store,
    store_row,
    tanh,
    unit_last_stride,
)
from .._numba_cache import njit

# Rows of the layout table, one per operand.
_GATES, _MASK, _OUT, _CELLS, _DOUT, _DGATES = range(6)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", inline="always")
def _valid_range(lengths, b, steps, has_lengths, reverse):  # pragma: no cover - numba
    """Processed rows [start, stop) that are real steps of sequence ``b`` (the rest is padding)."""
    if not has_lengths:
        return 0, steps
    length = min(max(lengths[b], 0), steps)
    return (steps - length, steps) if reverse else (0, length)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _forward_row(z_in, f_in, o_in, i_in, keep, c, out_row, cell_row, n, scale, one, output_gate, input_gate):
    # pragma: no cover - numba
    for j in range(n):
        z = tanh(load(z_in[j]))
        f = sigmoid(load(f_in[j])) * (scale * keep[j])
        i = sigmoid(load(i_in[j])) if input_gate else f
        c_j = i * z + (one - f) * c[j]
        c[j] = c_j
        if output_gate:
            store(cell_row, j, c_j)
            store(out_row, j, sigmoid(load(o_in[j])) * c_j)
        else:
            store(out_row, j, c_j)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _forward_segment(
    gates, mask, out, cells, h0, hn, lengths, steps, hidden, n, layout, b, c0, scale, one, flags
):  # pragma: no cover - numba
    output_gate, input_gate, has_h0, has_lengths, reverse, store_cells = flags
    go = layout[_GATES, 0] + b * layout[_GATES, 2] + c0
    mo = layout[_MASK, 0] + b * layout[_MASK, 2] + c0
    oo = layout[_OUT, 0] + b * layout[_OUT, 2] + c0
    co = layout[_CELLS, 0] + b * layout[_CELLS, 2] + c0
    gs, ms, os_, cs = layout[_GATES, 1], layout[_MASK, 1], layout[_OUT, 1], layout[_CELLS, 1]
    z_col, f_col = 0, hidden
    o_col = 2 * hidden if output_gate else f_col
    i_col = (3 if output_gate else 2) * hidden if input_gate else f_col
    c = scratch(n, out)
    if has_h0:
        load_row(c, h0[b, c0 : c0 + n], n)
    # Rows a pooling kind does not use point at scratch: LLVM's runtime alias checks would otherwise see
    # overlapping rows (cells is out without an output gate) and fall back to scalar code. Inference does
    # not keep the cell states either (``store_cells`` false): they go to the scratch row too.
    unused = np.empty(n, dtype=out.dtype)
    start, stop = _valid_range(lengths, b, steps, has_lengths, reverse)
    for k in range(steps):
        out_row = out[oo : oo + n]
        cell_row = cells[co : co + n] if store_cells else unused
        if start <= k < stop:
            _forward_row(
                gates[go + z_col : go + z_col + n],
                gates[go + f_col : go + f_col + n],
                gates[go + o_col : go + o_col + n],
                gates[go + i_col : go + i_col + n],
                mask[mo : mo + n],
                c,
                out_row,
                cell_row,
                n,
                scale,
                one,
                output_gate,
                input_gate,
            )
        else:  # padding: the state carries through untouched, the output is zero
            out_row[:] = 0
            if store_cells:
                cell_row[:] = 0
        go += gs
        mo += ms
        oo += os_
        co += cs
    store_row(hn[b, c0 : c0 + n], c, n)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _backward_row(
    z_in, f_in, o_in, i_in, keep, cell_row, prev_row, dout_row, dz, df, do, di, carry, n, scale, one, flags
):  # pragma: no cover - numba
    output_gate, input_gate = flags[0], flags[1]
    for j in range(n):
        z = tanh(load(z_in[j]))
        s_f = sigmoid(load(f_in[j]))
        k = scale * keep[j]
        f = s_f * k
        i = sigmoid(load(i_in[j])) if input_gate else f
        c_t, c_prev, dh = load(cell_row[j]), load(prev_row[j]), load(dout_row[j])
        if output_gate:
            o = sigmoid(load(o_in[j]))
            dc = carry[j] + dh * o
            store(do, j, dh * c_t * o * (one - o))
        else:
            dc = carry[j] + dh
        store(dz, j, dc * i * (one - z * z))
        if input_gate:
            store(di, j, dc * z * i * (one - i))
            d_f = -dc * c_prev
        else:
            d_f = dc * (z - c_prev)  # i is f: d(f z + (1 - f) c_prev) / df
        store(df, j, d_f * k * s_f * (one - s_f))
        carry[j] = (one - f) * dc  # as written: dc - f dc is NaN for an infinite dc


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _backward_segment(
    gates, mask, out, cells, h0, dhn, dout, dgates, dh0, lengths, steps, hidden, n, layout, b, c0, scale, one,
    flags, has_dhn,
):  # pragma: no cover - numba  # fmt: skip
    output_gate, input_gate, has_h0, has_lengths, reverse = flags
    # The layout points at the last processed row and steps towards the first one.
    go = layout[_GATES, 0] + b * layout[_GATES, 2] + c0
    mo = layout[_MASK, 0] + b * layout[_MASK, 2] + c0
    co = layout[_CELLS, 0] + b * layout[_CELLS, 2] + c0
    do_ = layout[_DOUT, 0] + b * layout[_DOUT, 2] + c0
    dgo = layout[_DGATES, 0] + b * layout[_DGATES, 2] + c0
    gs, ms, cs = layout[_GATES, 1], layout[_MASK, 1], layout[_CELLS, 1]
    dos, dgs = layout[_DOUT, 1], layout[_DGATES, 1]
    width = (2 + output_gate + input_gate) * hidden
    z_col, f_col = 0, hidden
    o_col = 2 * hidden if output_gate else f_col
    i_col = (3 if output_gate else 2) * hidden if input_gate else f_col
    carry = scratch(n, dgates)
    if has_dhn:
        load_row(carry, dhn[b, c0 : c0 + n], n)
    first = np.zeros(n, dtype=dgates.dtype)  # the state before the first real step: h0 or zeros
    if has_h0:
        first[:] = h0[b, c0 : c0 + n]
    unused_o, unused_i = np.empty(n, dtype=dgates.dtype), np.empty(n, dtype=dgates.dtype)  # see the forward
    start, stop = _valid_range(lengths, b, steps, has_lengths, reverse)
    for k in range(steps - 1, -1, -1):
        if start <= k < stop:
            prev = cells[co + cs : co + cs + n] if k > start else first
            _backward_row(
                gates[go + z_col : go + z_col + n],
                gates[go + f_col : go + f_col + n],
                gates[go + o_col : go + o_col + n],
                gates[go + i_col : go + i_col + n],
                mask[mo : mo + n],
                cells[co : co + n],
                prev,
                dout[do_ : do_ + n],
                dgates[dgo + z_col : dgo + z_col + n],
                dgates[dgo + f_col : dgo + f_col + n],
                dgates[dgo + o_col : dgo + o_col + n] if output_gate else unused_o,
                dgates[dgo + i_col : dgo + i_col + n] if input_gate else unused_i,
                carry,
                n,
                scale,
                one,
                flags,
            )
        else:  # padding: no gradient for its gates; the carried state's gradient passes through
            for g in range(0, width, hidden):
                dgates[dgo + g : dgo + g + n] = 0
        go += gs
        mo += ms
        co += cs
        do_ += dos
        dgo += dgs
    store_row(dh0[b, c0 : c0 + n], carry, n)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _forward_jobs(
    gates, mask, out, cells, h0, hn, lengths, steps, batch, hidden, chunk, layout, scale, one, flags, counter
):  # pragma: no cover - numba
    # one job: a (batch, column chunk) segment over all steps; claimed one at a time (see run_jobs)
    per_batch = (hidden + chunk - 1) // chunk
    while True:
        job = claim(counter)
        if job >= batch * per_batch:
            return
        b, c0 = job // per_batch, (job % per_batch) * chunk
        n = min(chunk, hidden - c0)
        _forward_segment(
            gates, mask, out, cells, h0, hn, lengths, steps, hidden, n, layout, b, c0, scale, one, flags
        )


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _backward_jobs(
    gates, mask, out, cells, h0, dhn, dout, dgates, dh0, lengths, steps, batch, hidden, chunk, layout, scale,
    one, flags, has_dhn, counter,
):  # pragma: no cover - numba  # fmt: skip
    per_batch = (hidden + chunk - 1) // chunk
    while True:
        job = claim(counter)
        if job >= batch * per_batch:
            return
        b, c0 = job // per_batch, (job % per_batch) * chunk
        n = min(chunk, hidden - c0)
        _backward_segment(
            gates, mask, out, cells, h0, dhn, dout, dgates, dh0, lengths, steps, hidden, n, layout, b, c0,
            scale, one, flags, has_dhn,
        )  # fmt: skip


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _single_step(gates, h0, out, cells, hn, hidden, scale, one, output_gate, input_gate, has_h0):
    # pragma: no cover - numba
    """One time step of contiguous (B, G*H) gates: the streaming case, without the layout machinery."""
    width = (2 + output_gate + input_gate) * hidden
    o_col = 2 * hidden if output_gate else hidden
    i_col = width - hidden if input_gate else hidden
    for b in range(gates.shape[0]):
        row = gates[b]
        c = scratch(hidden, out)
        if has_h0:
            load_row(c, h0[b], hidden)
        ones = np.ones(hidden, dtype=np.uint8)
        _forward_row(
            row[:hidden], row[hidden : 2 * hidden], row[o_col : o_col + hidden], row[i_col : i_col + hidden],
            ones, c, out[b], cells[b] if output_gate else hn[b], hidden, scale, one, output_gate, input_gate,
        )  # fmt: skip
        store_row(hn[b], c, hidden)


# ---------------------------------------------------------------------------------------------------------
# Launchers. Operands are time-major views: gates (T, B, G*H), mask / out / cells / dout (T, B, H).

_NO_LENGTHS = np.zeros(1, np.int64)


def _keep_operand(mask: Tensor | None, steps: int, batch: int, hidden: int) -> Tensor:
    """The zoneout keep-mask as uint8; without one, a single row of ones read at stride 0 (stays in cache)."""
    if mask is None:
        return torch.ones(hidden, dtype=torch.uint8).expand(steps, batch, hidden)
    return unit_last_stride(mask.view(torch.uint8) if mask.dtype == torch.bool else mask, torch.uint8)


def _lengths_array(lengths: Tensor | None) -> np.ndarray:
    return _NO_LENGTHS if lengths is None else lengths.detach().to("cpu", torch.int64).contiguous().numpy()


def _streaming_step(gates: Tensor, h0: Tensor | None, out: Tensor, cells: Tensor | None, hn: Tensor) -> bool:
    """Whether one step can skip the layout machinery: everything contiguous and of the gates' dtype.

    A call with T = 1 (streaming, batch 1) does so little arithmetic that the generic launcher's tensor
    views and tables would cost several times the step itself.
    """
    dtype = gates.dtype
    operands = (gates, out, hn, cells, h0)
    return all(t is None or (t.dtype == dtype and t.is_contiguous()) for t in operands)


def _numpy(t: Tensor) -> np.ndarray:
    """The cheapest numpy view of a tensor that does not require grad (a streaming step's operands)."""
    return t.numpy() if t.dtype in (torch.float32, torch.float64) else as_numpy(t)


def forward(
    gates: Tensor,
    h0: Tensor | None,
    mask: Tensor | None,
    scale: float,
    lengths: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    reverse: bool,
    out: Tensor,
    cells: Tensor | None,
    hn: Tensor,
) -> None:
    """Write the pooled ``out`` (T, B, H), the final state ``hn`` (B, H) and, with an output gate only, the
    ``cells`` (T, B, H) that the backward pass reads (without one, ``out`` is the cell state). ``cells`` is
    None where nothing will read them (inference): then they are not stored."""
    steps, batch, hidden = out.shape
    store_cells = output_gate and cells is not None
    dtype = gates.dtype  # every float dtype runs in place (half types through their storage)
    scale_k, one = compute_scalar(dtype, scale), compute_scalar(dtype, 1)
    if steps == 1 and mask is None and lengths is None and _streaming_step(gates, h0, out, cells, hn):
        step_out, step_hn = _numpy(out)[0], _numpy(hn)
        # one step's cell states are its final state: without cells to keep, hn takes them (and then c)
        step_cells = step_out if not output_gate else step_hn if cells is None else _numpy(cells)[0]
        _single_step(
            _numpy(gates)[0], NO_STATE[dtype] if h0 is None else _numpy(h0), step_out, step_cells, step_hn,
            hidden, scale_k, one, output_gate, input_gate, h0 is not None,
        )  # fmt: skip
        return
    # Write straight into the results when they suit the kernel, else into buffers copied back after.
    out_k = out if out.dtype == dtype and out.stride(-1) == 1 else torch.empty(out.shape, dtype=dtype)
    cells_k = out_k  # without an output gate the output is the cell state (and a stand-in without cells)
    if output_gate and cells is not None:
        cells_k = (
            cells if cells.dtype == dtype and cells.stride(-1) == 1 else torch.empty(cells.shape, dtype=dtype)
        )
    hn_k = hn if hn.dtype == dtype and hn.is_contiguous() else torch.empty(hn.shape, dtype=dtype)
    operands = [unit_last_stride(gates, dtype), _keep_operand(mask, steps, batch, hidden), out_k, cells_k]
    threads, chunk = schedule(steps, batch, hidden)
    args = (
        *(flat(t) for t in operands),
        state_array(h0, dtype),
        as_numpy(hn_k),
        _lengths_array(lengths),
        steps,
        batch,
        hidden,
        chunk,
        layout_rows(operands, steps, walk_backwards=reverse),
        scale_k,
        one,
        (output_gate, input_gate, h0 is not None, lengths is not None, reverse, store_cells),
    )
    run_jobs(_forward_jobs, args, threads)
    for result, computed in ((out, out_k), (cells if store_cells else None, cells_k), (hn, hn_k)):
        if result is not None and computed is not result:
            result.copy_(computed)


def backward(
    dout: Tensor,
    dhn: Tensor | None,
    gates: Tensor,
    cells: Tensor,
    h0: Tensor | None,
    mask: Tensor | None,
    scale: float,
    lengths: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    reverse: bool,
    dgates: Tensor,
    dh0: Tensor,
) -> None:
    """Write the gradients of the gates (T, B, G*H) and of ``h0`` (B, H).

    ``cells`` are the cell states of the forward pass (its output when there is no output gate); ``dout`` is
    the gradient of the output (any strides, stride 0 too) and ``dhn`` that of the final state, or None.
    """
    steps, batch, hidden = cells.shape
    dtype = gates.dtype
    dgates_target = (
        dgates if dgates.dtype == dtype and dgates.stride(-1) == 1 else torch.empty(dgates.shape, dtype=dtype)
    )
    dh0_target = dh0 if dh0.dtype == dtype and dh0.is_contiguous() else torch.empty(dh0.shape, dtype=dtype)
    cells_k = unit_last_stride(cells, dtype)
    operands = [
        unit_last_stride(gates, dtype),
        _keep_operand(mask, steps, batch, hidden),
        cells_k,  # the output slot is unused by the backward pass
        cells_k,
        unit_last_stride(dout, dtype),
        dgates_target,
    ]
    threads, chunk = schedule(steps, batch, hidden)
    args = (
        *(flat(t) for t in operands[:4]),
        state_array(h0, dtype),
        state_array(dhn, dtype),
        flat(operands[_DOUT]),
        flat(operands[_DGATES]),
        as_numpy(dh0_target),
        _lengths_array(lengths),
        steps,
        batch,
        hidden,
        chunk,
        layout_rows(operands, steps, walk_backwards=not reverse),
        compute_scalar(dtype, scale),
        compute_scalar(dtype, 1),
        (output_gate, input_gate, h0 is not None, lengths is not None, reverse),
        dhn is not None,
    )
    run_jobs(_backward_jobs, args, threads)
    if dgates_target is not dgates:
        dgates.copy_(dgates_target)
    if dh0_target is not dh0:
        dh0.copy_(dh0_target)
