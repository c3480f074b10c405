"""The fused QRNN pooling on GPU: Triton kernels, one pass forward and one pass backward, any strides.

Importing this module imports Triton (the dispatcher does so only when a Triton kernel first runs); kernels
compile on their first launch. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors in Triton's
interpreter, which is how the test suite checks them without a GPU. The launchers mirror ``cpu.py``'s:
time-major ``(T, B, ...)`` views of any strides in, results written into the views they are handed.

Schedule, as the sequential ForgetMult kernel (``ops/forget_mult/triton.py``, whose block size, pipelining
depth and launch helpers this module reuses): one program per (sequence, block of ``BLOCK_H`` columns)
walks time with the cell state in registers, the loads of the next rows software-pipelined
(``tl.range(num_stages=...)``). Every operand is a pointer plus its strides, so batch-first gates (a
transposed view), gate blocks sliced from a wider projection, and a stride-0 incoming gradient are read in
place; the zoneout mask is read as uint8 (a bool tensor reinterpreted, not copied).

Variable lengths are handled inside the kernels: each program reads its sequence's length (clamped into
``[0, T]``), so no sorting and no per-sequence work on the host. The real steps of a sequence are always
rows ``[0, length)``, whatever the direction: the forward walks them from row 0 up (from row ``length - 1``
down with ``reverse``), the backward walks them the other way, and rows ``[length, T)`` are padding, written
without being read (zero output and cells forward, zero gate gradients backward; the state and its gradient
pass through them unchanged, which is why the walk can simply skip them).

Backward re-computes the activations from the gates (cheaper than storing them) and reads the stored cell
states (the output itself without an output gate): ``c_{t-1}`` from the cells row before, except for the
forward's first real step, which reads ``h0`` (or zeros) and runs after the loop, so the loop's loads need
no per-step test. Half types load, accumulate in float32 and store in their own dtype; float64 stays float64.

There is no chunked-over-time variant: a layer's ``batch * hidden`` columns usually fill the GPU. For the
few-columns case (batch-1 inference on long sequences) the recurrence ``c_t = (1 - f_t) c_{t-1} + i_t z_t``
would chunk exactly as ForgetMult's does, with chunks past a sequence's length acting as the identity.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..forget_mult.triton import (
    _NUM_STAGES,
    _acc_dtype,
    _aligned,
    _alignment,
    _block_h,
    _on_device,
    _strides,
)

__all__ = ["backward", "forward"]


# ---------------------------------------------------------------------------------------------------------
# Element-wise pieces, shared by the forward and the backward kernel.


@triton.jit
def _tanh(x):
    """tanh from one exp of ``-2|x|`` (never overflows): Triton's interpreter has no libdevice ``tanh``.
    The absolute error is about one ulp of 1 (near 0 the relative error grows, the absolute one does not)."""
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0.0, -y, y)


@triton.jit
def _sequence_length(lengths_ptr, b, stride_l, steps, HAS_LENGTHS: tl.constexpr):
    """Real steps of sequence ``b``, clamped into ``[0, T]`` (the dispatcher checks them only when not
    tracing)."""
    length = steps
    if HAS_LENGTHS:
        length = tl.minimum(tl.maximum(tl.load(lengths_ptr + b * stride_l), 0), steps).to(tl.int32)
    return length


@triton.jit
def _activations(
    z_ptrs,
    gate_step,
    keep_ptrs,
    cmask,
    scale,
    HAS_MASK: tl.constexpr,
    OUTPUT_GATE: tl.constexpr,
    INPUT_GATE: tl.constexpr,
    ACC: tl.constexpr,
):
    """z, sigmoid(F), the forget factor ``k = scale * keep``, f, i and o of one row.

    ``z_ptrs`` point at the row's Z block; each further gate block is ``gate_step`` elements on. Where the
    pooling kind has no output gate, ``o`` is ``f`` and is never used.
    """
    z = _tanh(tl.load(z_ptrs, mask=cmask, other=0.0).to(ACC))
    s_f = tl.sigmoid(tl.load(z_ptrs + gate_step, mask=cmask, other=0.0).to(ACC))
    k = scale
    if HAS_MASK:
        k = k * tl.load(keep_ptrs, mask=cmask, other=0).to(ACC)
    f = s_f * k
    i = f
    if INPUT_GATE:
        i = tl.sigmoid(tl.load(z_ptrs + (2 + OUTPUT_GATE) * gate_step, mask=cmask, other=0.0).to(ACC))
    o = f
    if OUTPUT_GATE:
        o = tl.sigmoid(tl.load(z_ptrs + 2 * gate_step, mask=cmask, other=0.0).to(ACC))
    return z, s_f, k, f, i, o


# ---------------------------------------------------------------------------------------------------------
# Kernels. Grid: (batch, column blocks). As ForgetMult's (see "Specialization" there), T and the batch
# strides (T * G * H for batch-first gates) are not specialized, so that a new T compiles nothing;
# ALIGN restores the alignment the batch strides' specialization gave, and more.


@triton.jit(do_not_specialize=["steps", "stride_gb", "stride_mb", "stride_ob", "stride_cb"])
def _forward_kernel(
    gates_ptr,
    mask_ptr,
    h0_ptr,
    lengths_ptr,
    out_ptr,
    cells_ptr,
    hn_ptr,
    scale: tl.float64,  # a double, so that float64 runs see the exact forget_scale
    steps,
    hidden,
    stride_gt,
    stride_gb,
    stride_gh,
    stride_mt,
    stride_mb,
    stride_mh,
    stride_h0b,
    stride_h0h,
    stride_l,
    stride_ot,
    stride_ob,
    stride_oh,
    stride_ct,
    stride_cb,
    stride_ch,
    stride_hnb,
    stride_hnh,
    OUTPUT_GATE: tl.constexpr,
    INPUT_GATE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    REVERSE: tl.constexpr,
    ALIGN: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Outputs, cell states (with an output gate) and the final state of one block of one sequence."""
    hidden = _aligned(hidden, ALIGN)
    stride_gt = _aligned(stride_gt, ALIGN)
    stride_gb = _aligned(stride_gb, ALIGN)
    stride_mt = _aligned(stride_mt, ALIGN)
    stride_mb = _aligned(stride_mb, ALIGN)
    stride_ot = _aligned(stride_ot, ALIGN)
    stride_ob = _aligned(stride_ob, ALIGN)
    stride_ct = _aligned(stride_ct, ALIGN)
    stride_cb = _aligned(stride_cb, ALIGN)
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < hidden
    cols = cols.to(tl.int64)  # column * stride may pass 2**31 for transposed layouts
    length = _sequence_length(lengths_ptr, b, stride_l, steps, HAS_LENGTHS)
    z_base = gates_ptr + b * stride_gb + cols * stride_gh
    gate_step = tl.cast(hidden, tl.int64) * stride_gh
    keep_base = mask_ptr + b * stride_mb + cols * stride_mh
    out_base = out_ptr + b * stride_ob + cols * stride_oh
    cells_base = cells_ptr + b * stride_cb + cols * stride_ch
    scale_acc = tl.full([BLOCK_H], scale, ACC)
    if HAS_H0:
        c = tl.load(h0_ptr + b * stride_h0b + cols * stride_h0h, mask=cmask, other=0.0).to(ACC)
    else:
        c = tl.zeros([BLOCK_H], dtype=ACC)

    if HAS_LENGTHS:  # padding rows: zero output and cells, nothing read
        zeros = tl.zeros([BLOCK_H], dtype=out_ptr.dtype.element_ty)
        for p in tl.range(0, steps - length):
            row = tl.cast(length + p, tl.int64)
            tl.store(out_base + row * stride_ot, zeros, mask=cmask)
            if OUTPUT_GATE:
                tl.store(cells_base + row * stride_ct, zeros.to(cells_ptr.dtype.element_ty), mask=cmask)

    if REVERSE:
        row0 = length - 1
        dstep = -1
    else:
        row0 = 0
        dstep = 1
    for p in tl.range(0, length, num_stages=NUM_STAGES):
        row = tl.cast(row0 + p * dstep, tl.int64)
        z, _, _, f, i, o = _activations(
            z_base + row * stride_gt,
            gate_step,
            keep_base + row * stride_mt,
            cmask,
            scale_acc,
            HAS_MASK,
            OUTPUT_GATE,
            INPUT_GATE,
            ACC,
        )
        c = i * z + (1.0 - f) * c  # as the reference writes it
        if OUTPUT_GATE:
            tl.store(cells_base + row * stride_ct, c.to(cells_ptr.dtype.element_ty), mask=cmask)
            tl.store(out_base + row * stride_ot, (o * c).to(out_ptr.dtype.element_ty), mask=cmask)
        else:
            tl.store(out_base + row * stride_ot, c.to(out_ptr.dtype.element_ty), mask=cmask)
    tl.store(hn_ptr + b * stride_hnb + cols * stride_hnh, c.to(hn_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _backward_step(
    z_ptrs,
    gate_step,
    keep_ptrs,
    cell_ptrs,
    dout_ptrs,
    dz_ptrs,
    dgate_step,
    c_prev,
    carry,
    cmask,
    scale,
    HAS_MASK: tl.constexpr,
    OUTPUT_GATE: tl.constexpr,
    INPUT_GATE: tl.constexpr,
    ACC: tl.constexpr,
):
    """One real step of the backward: writes the row's gate gradients; returns the carry to the step before,
    ``(1 - f) dc``. The arithmetic is ``cpu.py``'s ``_backward_row``."""
    z, s_f, k, f, i, o = _activations(
        z_ptrs, gate_step, keep_ptrs, cmask, scale, HAS_MASK, OUTPUT_GATE, INPUT_GATE, ACC
    )
    dh = tl.load(dout_ptrs, mask=cmask, other=0.0).to(ACC)
    ty = dz_ptrs.dtype.element_ty
    if OUTPUT_GATE:
        c = tl.load(cell_ptrs, mask=cmask, other=0.0).to(ACC)
        dc = carry + dh * o
        tl.store(dz_ptrs + 2 * dgate_step, (dh * c * o * (1.0 - o)).to(ty), mask=cmask)
    else:
        dc = carry + dh
    tl.store(dz_ptrs, (dc * i * (1.0 - z * z)).to(ty), mask=cmask)
    if INPUT_GATE:
        tl.store(dz_ptrs + (2 + OUTPUT_GATE) * dgate_step, (dc * z * i * (1.0 - i)).to(ty), mask=cmask)
        d_f = -dc * c_prev
    else:
        d_f = dc * (z - c_prev)  # i is f: d(f z + (1 - f) c_prev) / df
    tl.store(dz_ptrs + dgate_step, (d_f * k * s_f * (1.0 - s_f)).to(ty), mask=cmask)
    return (1.0 - f) * dc


@triton.jit(do_not_specialize=["steps", "stride_dob", "stride_gb", "stride_cb", "stride_mb", "stride_dgb"])
def _backward_kernel(
    dout_ptr,
    dhn_ptr,
    gates_ptr,
    cells_ptr,
    h0_ptr,
    mask_ptr,
    lengths_ptr,
    dgates_ptr,
    dh0_ptr,
    scale: tl.float64,
    steps,
    hidden,
    stride_dot,
    stride_dob,
    stride_doh,
    stride_dnb,
    stride_dnh,
    stride_gt,
    stride_gb,
    stride_gh,
    stride_ct,
    stride_cb,
    stride_ch,
    stride_h0b,
    stride_h0h,
    stride_mt,
    stride_mb,
    stride_mh,
    stride_l,
    stride_dgt,
    stride_dgb,
    stride_dgh,
    stride_d0b,
    stride_d0h,
    OUTPUT_GATE: tl.constexpr,
    INPUT_GATE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_DHN: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    REVERSE: tl.constexpr,
    ALIGN: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Gate gradients and dh0 of one block of one sequence, walking against the forward's direction."""
    hidden = _aligned(hidden, ALIGN)
    stride_dot = _aligned(stride_dot, ALIGN)
    stride_dob = _aligned(stride_dob, ALIGN)
    stride_gt = _aligned(stride_gt, ALIGN)
    stride_gb = _aligned(stride_gb, ALIGN)
    stride_ct = _aligned(stride_ct, ALIGN)
    stride_cb = _aligned(stride_cb, ALIGN)
    stride_mt = _aligned(stride_mt, ALIGN)
    stride_mb = _aligned(stride_mb, ALIGN)
    stride_dgt = _aligned(stride_dgt, ALIGN)
    stride_dgb = _aligned(stride_dgb, ALIGN)
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < hidden
    cols = cols.to(tl.int64)
    length = _sequence_length(lengths_ptr, b, stride_l, steps, HAS_LENGTHS)
    z_base = gates_ptr + b * stride_gb + cols * stride_gh
    gate_step = tl.cast(hidden, tl.int64) * stride_gh
    dz_base = dgates_ptr + b * stride_dgb + cols * stride_dgh
    dgate_step = tl.cast(hidden, tl.int64) * stride_dgh
    keep_base = mask_ptr + b * stride_mb + cols * stride_mh
    cells_base = cells_ptr + b * stride_cb + cols * stride_ch
    dout_base = dout_ptr + b * stride_dob + cols * stride_doh
    scale_acc = tl.full([BLOCK_H], scale, ACC)
    if HAS_DHN:
        carry = tl.load(dhn_ptr + b * stride_dnb + cols * stride_dnh, mask=cmask, other=0.0).to(ACC)
    else:
        carry = tl.zeros([BLOCK_H], dtype=ACC)

    if HAS_LENGTHS:  # padding rows: no gradient for their gates; the carry passes through untouched
        zeros = tl.zeros([BLOCK_H], dtype=dgates_ptr.dtype.element_ty)
        for p in tl.range(0, steps - length):
            row_ptrs = dz_base + tl.cast(length + p, tl.int64) * stride_dgt
            for g in tl.static_range(2 + OUTPUT_GATE + INPUT_GATE):
                tl.store(row_ptrs + g * dgate_step, zeros, mask=cmask)

    # The forward's previous row of row r is r + dstep: the backward walks against it.
    if REVERSE:
        row0 = 0
        dstep = 1
    else:
        row0 = length - 1
        dstep = -1
    for p in tl.range(0, length - 1, num_stages=NUM_STAGES):
        row = tl.cast(row0 + p * dstep, tl.int64)
        c_prev = tl.load(cells_base + (row + dstep) * stride_ct, mask=cmask, other=0.0).to(ACC)
        carry = _backward_step(
            z_base + row * stride_gt,
            gate_step,
            keep_base + row * stride_mt,
            cells_base + row * stride_ct,
            dout_base + row * stride_dot,
            dz_base + row * stride_dgt,
            dgate_step,
            c_prev,
            carry,
            cmask,
            scale_acc,
            HAS_MASK,
            OUTPUT_GATE,
            INPUT_GATE,
            ACC,
        )
    if length > 0:  # the forward's first real step: its previous state is h0 (or zeros), not a cells row
        if HAS_H0:
            c_prev = tl.load(h0_ptr + b * stride_h0b + cols * stride_h0h, mask=cmask, other=0.0).to(ACC)
        else:
            c_prev = tl.zeros([BLOCK_H], dtype=ACC)
        row = tl.cast(row0 + (length - 1) * dstep, tl.int64)
        carry = _backward_step(
            z_base + row * stride_gt,
            gate_step,
            keep_base + row * stride_mt,
            cells_base + row * stride_ct,
            dout_base + row * stride_dot,
            dz_base + row * stride_dgt,
            dgate_step,
            c_prev,
            carry,
            cmask,
            scale_acc,
            HAS_MASK,
            OUTPUT_GATE,
            INPUT_GATE,
            ACC,
        )
    tl.store(dh0_ptr + b * stride_d0b + cols * stride_d0h, carry.to(dh0_ptr.dtype.element_ty), mask=cmask)


# ---------------------------------------------------------------------------------------------------------
# Launchers: cpu.py's interface. Operands are time-major views: gates (T, B, G*H), mask / out / cells /
# dout (T, B, H), states (B, H), lengths (B,). Nothing here reads a tensor's values on the host or allocates
# a data-dependent size, so the launchers can be captured in a CUDA graph.


def _keep_operand(mask: Tensor | None) -> Tensor | None:
    """The zoneout keep-mask as uint8: a bool mask is reinterpreted (same element size), not copied."""
    if mask is None or mask.dtype == torch.uint8:
        return mask
    return mask.view(torch.uint8)


def _lengths_operand(lengths: Tensor | None, like: Tensor) -> Tensor | None:
    """``lengths`` where the kernel can read it: a PackedSequence's lengths live on the CPU. A copy of B
    integers, queued on the current stream; the values are never read on the host."""
    if lengths is None or lengths.device == like.device:
        return lengths
    return lengths.to(like.device, non_blocking=True)


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
    None where nothing will read them (inference); this kernel then stores them in a buffer of its own."""
    steps, batch, hidden = out.shape
    keep = _keep_operand(mask)
    lengths = _lengths_operand(lengths, gates)
    if not output_gate:
        cells_k = out  # nothing is stored there: any valid pointer
    elif cells is None:
        cells_k = torch.empty_like(out)
    else:
        cells_k = cells
    block_h = _block_h(hidden, gates.dtype)
    with _on_device(gates):
        _forward_kernel[(batch, triton.cdiv(hidden, block_h))](
            gates,
            gates if keep is None else keep,
            gates if h0 is None else h0,
            gates if lengths is None else lengths,
            out,
            cells_k,
            hn,
            float(scale),
            steps,
            hidden,
            *gates.stride(),
            *_strides(keep, 3),
            *_strides(h0, 2),
            *_strides(lengths, 1),
            *out.stride(),
            *cells_k.stride(),
            *hn.stride(),
            OUTPUT_GATE=output_gate,
            INPUT_GATE=input_gate,
            HAS_MASK=keep is not None,
            HAS_H0=h0 is not None,
            HAS_LENGTHS=lengths is not None,
            REVERSE=reverse,
            ALIGN=_alignment(hidden, gates, out, cells_k, *([] if keep is None else [keep])),
            ACC=_acc_dtype(gates.dtype)[1],
            BLOCK_H=block_h,
            NUM_STAGES=_NUM_STAGES,
            num_warps=1,
        )


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
    the gradient of the output (any strides, stride 0 too: read in place) and ``dhn`` that of the final
    state, or None.
    """
    steps, batch, hidden = cells.shape
    keep = _keep_operand(mask)
    lengths = _lengths_operand(lengths, gates)
    block_h = _block_h(hidden, gates.dtype)
    with _on_device(gates):
        _backward_kernel[(batch, triton.cdiv(hidden, block_h))](
            dout,
            gates if dhn is None else dhn,
            gates,
            cells,
            gates if h0 is None else h0,
            gates if keep is None else keep,
            gates if lengths is None else lengths,
            dgates,
            dh0,
            float(scale),
            steps,
            hidden,
            *dout.stride(),
            *_strides(dhn, 2),
            *gates.stride(),
            *cells.stride(),
            *_strides(h0, 2),
            *_strides(keep, 3),
            *_strides(lengths, 1),
            *dgates.stride(),
            *dh0.stride(),
            OUTPUT_GATE=output_gate,
            INPUT_GATE=input_gate,
            HAS_MASK=keep is not None,
            HAS_H0=h0 is not None,
            HAS_DHN=dhn is not None,
            HAS_LENGTHS=lengths is not None,
            REVERSE=reverse,
            ALIGN=_alignment(hidden, dout, gates, cells, dgates, *([] if keep is None else [keep])),
            ACC=_acc_dtype(gates.dtype)[1],
            BLOCK_H=block_h,
            NUM_STAGES=_NUM_STAGES,
            num_warps=1,
        )
