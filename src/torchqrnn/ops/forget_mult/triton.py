"""ForgetMult on GPU: Triton kernels, forward and backward, both directions, any strides.

Importing this module imports Triton (the dispatcher does so only when a Triton kernel first runs); kernels
compile on their first launch. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors in Triton's
interpreter, which is how the test suite checks them without a GPU.

How the kernels see memory: every operand is passed as a pointer plus its strides, so transposed
(batch-first) views, gate slices of one projection and stride-0 incoming gradients are read in place. A
kernel walks *positions* ``p = 0 .. T-1`` in the order it processes time; the row of position ``p`` is
``row0 + p * dstep`` with ``dstep = +1`` or ``-1``. The forward walks time in the recurrence's direction
(``reverse`` starts at ``T-1``), the backward walks the opposite way, so both directions are one kernel
each, with no flipped copies.

Two schedules, chosen by :func:`choose_chunk`:

* sequential: one program per (batch, block of ``BLOCK_H`` columns) walks all ``T`` steps, the state in
  registers. Loads are software-pipelined ``_NUM_STAGES`` steps ahead (``tl.range(num_stages=...)``), so
  several rows are in flight while the dependent chain of multiply-adds runs.
* chunked: for few columns and long sequences, where the sequential grid leaves most of a GPU idle and the
  bytes in flight are too few to cover memory latency. ``T`` is cut into chunks and the recurrence
  ``s_p = a_p s_{p-1} + b_p`` is solved in three launches: (1) per chunk, the state it reaches from a zero
  start and the product of its ``a_p`` (its "decay"); (2) per column, a walk over the chunks combining
  those into the state entering each chunk (``carry_k+1 = decay_k * carry_k + state_k``); (3) per chunk, the
  sequential kernel again, started from its carry, writing every output. Step (3) recomputes the chunk
  rather than patching outputs stored by (1) (``h_t += carry * prod(1 - f)``): that reads f and x once more
  instead of reading and rewriting ``out``, so it moves fewer bytes, rounds half types once, and never
  multiplies long products of ``(1 - f)`` into the outputs. Nothing divides by ``1 - f``.

The backward is the same linear recurrence run the other way: the carry ``c = (1 - f_t) g_t`` passed from
step ``t`` to step ``t-1`` obeys ``c_{t-1} = (1 - f_t) (dh_t + c_t)``, chunked exactly like the forward.
Half types load, accumulate in float32 and store in their own dtype; float64 stays float64.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import thresholds

__all__ = ["backward", "choose_chunk", "forward"]

# Software-pipelining depth of the time loops (``tl.range(num_stages=...)``): the loads of the next
# ``_NUM_STAGES - 1`` rows are in flight, through a shared-memory ring, while the current row is computed.
_NUM_STAGES = 4
# Columns per program, one warp per program: more programs spread the latency-bound walk over more SMs,
# and 128 float32 columns give each thread one 16-byte load per row. At least a warp's 32 threads.
_MIN_BLOCK_H, _MAX_BLOCK_H = 32, 128
# The chunked schedule runs when fewer (batch, hidden) columns than this walk in parallel: below it, the
# sequential kernel keeps too few bytes in flight to approach memory bandwidth (an estimate: about
# 2 MB must be in flight to cover ~1 us of latency at 2-3 TB/s; 16384 columns x 3 rows ahead x 8 bytes of
# f and x is 0.4 MB). Chunking costs a summary pass (forward: reading f and x twice, 5 tensor passes
# instead of 3), so it only pays when it multiplies the parallelism several times. Tune on a GPU with
# ``python -m torchqrnn.bench.gpu``.
_CHUNKED_BELOW_COLUMNS = thresholds.TRITON_CHUNKED_BELOW_COLUMNS
# Total columns x chunks the chunked schedule aims for, and its shortest chunk: shorter ones spend their
# time filling the load pipeline and make the sequential walk over chunk carries longer.
_TARGET_COLUMNS = thresholds.TRITON_TARGET_COLUMNS
_MIN_CHUNK_STEPS = thresholds.TRITON_MIN_CHUNK_STEPS
# The carries are combined by a sequential walk over the chunks (launch 2), and a grid holds at most 65535
# chunks: beyond a thousand, more chunks only lengthen that walk.
_MAX_CHUNKS = thresholds.TRITON_MAX_CHUNKS


def choose_chunk(steps: int, batch: int, hidden: int) -> int:
    """Time steps per chunk for the chunked scan, or 0 for the sequential kernel.

    The one place the schedule is decided (tests replace it to force either kernel on tiny shapes):
    chunk only when few columns run in parallel (``batch * hidden < _CHUNKED_BELOW_COLUMNS``) and the
    sequence holds at least two chunks of ``_MIN_CHUNK_STEPS``; then cut it into as many chunks as bring
    ``columns * chunks`` to ``_TARGET_COLUMNS``, each at least ``_MIN_CHUNK_STEPS`` long, at most
    ``_MAX_CHUNKS`` of them.
    """
    columns = batch * hidden
    if columns == 0 or columns >= _CHUNKED_BELOW_COLUMNS or steps < 2 * _MIN_CHUNK_STEPS:
        return 0
    chunks = min(math.ceil(_TARGET_COLUMNS / columns), steps // _MIN_CHUNK_STEPS, _MAX_CHUNKS)
    if chunks < 2:
        return 0
    return math.ceil(steps / chunks)


# ---------------------------------------------------------------------------------------------------------
# Specialization. Triton compiles a kernel once per class of its integer arguments (equal to 1, divisible
# by 16, other) unless they are marked ``do_not_specialize``. Left to it, the arguments that carry the
# sequence length T would compile new binaries as T changes, which a language model with variable BPTT
# does at every batch (0.1-0.9 s each): T itself, the chunk length, the first row of a reverse walk
# (T - 1), the chunk count, and the batch strides of batch-first operands (T * H). So none of them is
# specialized, and this costs no speed where it matters:
#
# * T, the chunk length, the first row and the chunk count only bound loops and offset a loop-variant row
#   index: the compiler has no use for their divisibility (the pipelined loop is the same code for any
#   trip count, and ``row`` has no known divisibility either way).
# * What the batch strides' divisibility did buy is the alignment of each program's base address, which
#   vector loads and the copies into shared memory of the software pipeline need. ``ALIGN`` (a
#   constexpr) restores it and goes further: it is the largest power of two up to 16 dividing the time and
#   batch strides of every streamed operand, and the kernels rewrite those strides as
#   ``stride // ALIGN * ALIGN``, which shows the compiler that divisibility. At 16 this is
#   what the specialized strides gave: the same loads and stores (checked on the PTX for sm_90, float32,
#   bfloat16 and float16, both layouts). ``hidden`` joins the divisor, since the column mask
#   ``cols < hidden`` must be uniform over a vector too. Below 16, where Triton's specialization knows
#   nothing (it tracks only 16), the compiler still learns that rows start on 4- or 8-byte boundaries:
#   with at least two columns a thread (``_block_h``), that keeps the software-pipelined prefetch for half
#   types whenever H is even (H = 20, 328: 4- and 8-byte copies into shared memory), where they used to
#   load scalars with no prefetch. An odd H still loses it for half types: a row may start on any 2-byte
#   boundary, and an asynchronous copy moves at least 4 bytes (padding would cost a copy of the inputs);
#   float32 and float64 keep it for any H. The alignment does not depend on T: in each layout one of the
#   time and batch strides is a multiple of the other (batch-first: H and T * H; time-major: B * H and H),
#   so their common divisor is the smaller one, whatever T is.
#
# ``tests/ops/test_triton_specializations.py`` sweeps T and counts the binaries each launcher compiles.

_SPECIALIZED_ALIGNMENT = 16  # the divisibility Triton's integer specialization tracks


def _alignment(hidden: int, *operands: Tensor) -> int:
    """The largest power of two up to 16 dividing ``hidden`` and the time and batch strides (dims 0 and 1)
    of every operand."""
    alignment = math.gcd(_SPECIALIZED_ALIGNMENT, hidden)
    for t in operands:
        alignment = math.gcd(alignment, t.stride(0), t.stride(1))
    return alignment


@triton.jit
def _aligned(value, ALIGN: tl.constexpr):
    """``hidden`` or a time or batch stride, shown to the compiler as a multiple of ``ALIGN`` (see above)."""
    if ALIGN > 1:
        # exact for a multiple, and the product tells the compiler so (a tl.multiple_of hint on a
        # scalar argument does not reach its alignment analysis)
        value = value // ALIGN * ALIGN
    return value


# ---------------------------------------------------------------------------------------------------------
# Kernels. Grid: (batch, column blocks, chunks); the sequential schedule is one chunk of T steps.


@triton.jit(do_not_specialize=["steps", "chunk_steps", "row0", "stride_fb", "stride_xb", "stride_ob"])
def _forward_kernel(
    f_ptr,
    x_ptr,
    out_ptr,
    init_ptr,
    steps,
    chunk_steps,
    row0,
    dstep,
    hidden,
    stride_ft,
    stride_fb,
    stride_fh,
    stride_xt,
    stride_xb,
    stride_xh,
    stride_ot,
    stride_ob,
    stride_oh,
    stride_ic,
    stride_ib,
    stride_ih,
    HAS_INIT: tl.constexpr,
    ALIGN: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Every h of one chunk, started from ``init[chunk]`` (h0, or the chunk's carry) or zeros."""
    hidden = _aligned(hidden, ALIGN)
    stride_ft = _aligned(stride_ft, ALIGN)
    stride_fb = _aligned(stride_fb, ALIGN)
    stride_xt = _aligned(stride_xt, ALIGN)
    stride_xb = _aligned(stride_xb, ALIGN)
    stride_ot = _aligned(stride_ot, ALIGN)
    stride_ob = _aligned(stride_ob, ALIGN)
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    cols = cols.to(tl.int64)  # column * stride may pass 2**31 for transposed layouts
    chunk = tl.program_id(2)
    first = chunk * chunk_steps
    last = tl.minimum(first + chunk_steps, steps)
    f_base = f_ptr + b * stride_fb + cols * stride_fh
    x_base = x_ptr + b * stride_xb + cols * stride_xh
    out_base = out_ptr + b * stride_ob + cols * stride_oh
    if HAS_INIT:
        init = init_ptr + chunk.to(tl.int64) * stride_ic + b * stride_ib + cols * stride_ih
        h = tl.load(init, mask=mask, other=0.0).to(ACC)
    else:
        h = tl.zeros([BLOCK_H], dtype=ACC)
    for p in tl.range(first, last, num_stages=NUM_STAGES):
        row = (row0 + p * dstep).to(tl.int64)
        f = tl.load(f_base + row * stride_ft, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_base + row * stride_xt, mask=mask, other=0.0).to(ACC)
        h = f * x + (1.0 - f) * h  # as the reference writes it: exact x where f == 1
        tl.store(out_base + row * stride_ot, h.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["steps", "chunk_steps", "row0", "stride_fb", "stride_xb"])
def _forward_summary_kernel(
    f_ptr,
    x_ptr,
    decay_ptr,
    state_ptr,
    steps,
    chunk_steps,
    row0,
    dstep,
    hidden,
    stride_ft,
    stride_fb,
    stride_fh,
    stride_xt,
    stride_xb,
    stride_xh,
    ALIGN: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Per chunk: the h it reaches from a zero start, and the product of its (1 - f)."""
    hidden = _aligned(hidden, ALIGN)
    stride_ft = _aligned(stride_ft, ALIGN)
    stride_fb = _aligned(stride_fb, ALIGN)
    stride_xt = _aligned(stride_xt, ALIGN)
    stride_xb = _aligned(stride_xb, ALIGN)
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    cols = cols.to(tl.int64)
    chunk = tl.program_id(2)
    first = chunk * chunk_steps
    last = tl.minimum(first + chunk_steps, steps)
    f_base = f_ptr + b * stride_fb + cols * stride_fh
    x_base = x_ptr + b * stride_xb + cols * stride_xh
    h = tl.zeros([BLOCK_H], dtype=ACC)
    decay = tl.full([BLOCK_H], 1.0, dtype=ACC)
    for p in tl.range(first, last, num_stages=NUM_STAGES):
        row = (row0 + p * dstep).to(tl.int64)
        f = tl.load(f_base + row * stride_ft, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_base + row * stride_xt, mask=mask, other=0.0).to(ACC)
        h = f * x + (1.0 - f) * h
        decay = decay * (1.0 - f)
    summary = (chunk.to(tl.int64) * tl.num_programs(0) + b) * hidden + cols
    tl.store(decay_ptr + summary, decay, mask=mask)
    tl.store(state_ptr + summary, h, mask=mask)


@triton.jit(do_not_specialize=["chunks"])
def _combine_chunks_kernel(
    decay_ptr,
    state_ptr,
    init_ptr,
    chunks,
    batch,
    hidden,
    stride_ib,
    stride_ih,
    HAS_INIT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Per column, in processing order: overwrite each chunk's zero-start state with the state entering it."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    cols = cols.to(tl.int64)
    if HAS_INIT:
        carry = tl.load(init_ptr + b * stride_ib + cols * stride_ih, mask=mask, other=0.0).to(ACC)
    else:
        carry = tl.zeros([BLOCK_H], dtype=ACC)
    for chunk in range(chunks):
        summary = (chunk * batch + b) * hidden + cols
        decay = tl.load(decay_ptr + summary, mask=mask, other=0.0)
        state = tl.load(state_ptr + summary, mask=mask, other=0.0)
        tl.store(state_ptr + summary, carry, mask=mask)
        carry = decay * carry + state


@triton.jit
def _backward_step(g_ptrs, f_ptrs, x_ptrs, df_ptrs, dx_ptrs, h_prev, carry, mask, ACC: tl.constexpr):
    """One step of the backward: g = dh + carry; writes dx and df; returns the carry (1 - f) g."""
    g = tl.load(g_ptrs, mask=mask, other=0.0).to(ACC) + carry
    f = tl.load(f_ptrs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
    tl.store(dx_ptrs, (f * g).to(dx_ptrs.dtype.element_ty), mask=mask)
    tl.store(df_ptrs, ((x - h_prev) * g).to(df_ptrs.dtype.element_ty), mask=mask)
    return (1.0 - f) * g


@triton.jit(
    do_not_specialize=[
        "steps",
        "chunk_steps",
        "row0",
        "stride_gb",
        "stride_fb",
        "stride_xb",
        "stride_ob",
        "stride_dfb",
        "stride_dxb",
    ]
)
def _backward_kernel(
    dout_ptr,
    f_ptr,
    x_ptr,
    out_ptr,
    h0_ptr,
    init_ptr,
    df_ptr,
    dx_ptr,
    dh0_ptr,
    steps,
    chunk_steps,
    row0,
    dstep,
    hidden,
    stride_gt,
    stride_gb,
    stride_gh,
    stride_ft,
    stride_fb,
    stride_fh,
    stride_xt,
    stride_xb,
    stride_xh,
    stride_ot,
    stride_ob,
    stride_oh,
    stride_hb,
    stride_hh,
    stride_ic,
    stride_ib,
    stride_ih,
    stride_dft,
    stride_dfb,
    stride_dfh,
    stride_dxt,
    stride_dxb,
    stride_dxh,
    stride_d0b,
    stride_d0h,
    HAS_H0: tl.constexpr,
    HAS_INIT: tl.constexpr,
    ALIGN: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """df, dx of one chunk, walking against the forward's direction from the carry ``init[chunk]`` or
    zeros; the chunk holding the forward's first step also writes dh0."""
    hidden = _aligned(hidden, ALIGN)
    stride_gt = _aligned(stride_gt, ALIGN)
    stride_gb = _aligned(stride_gb, ALIGN)
    stride_ft = _aligned(stride_ft, ALIGN)
    stride_fb = _aligned(stride_fb, ALIGN)
    stride_xt = _aligned(stride_xt, ALIGN)
    stride_xb = _aligned(stride_xb, ALIGN)
    stride_ot = _aligned(stride_ot, ALIGN)
    stride_ob = _aligned(stride_ob, ALIGN)
    stride_dft = _aligned(stride_dft, ALIGN)
    stride_dfb = _aligned(stride_dfb, ALIGN)
    stride_dxt = _aligned(stride_dxt, ALIGN)
    stride_dxb = _aligned(stride_dxb, ALIGN)
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    cols = cols.to(tl.int64)
    chunk = tl.program_id(2)
    first = chunk * chunk_steps
    last = tl.minimum(first + chunk_steps, steps)
    g_base = dout_ptr + b * stride_gb + cols * stride_gh
    f_base = f_ptr + b * stride_fb + cols * stride_fh
    x_base = x_ptr + b * stride_xb + cols * stride_xh
    out_base = out_ptr + b * stride_ob + cols * stride_oh
    df_base = df_ptr + b * stride_dfb + cols * stride_dfh
    dx_base = dx_ptr + b * stride_dxb + cols * stride_dxh
    if HAS_INIT:
        init = init_ptr + chunk.to(tl.int64) * stride_ic + b * stride_ib + cols * stride_ih
        carry = tl.load(init, mask=mask, other=0.0).to(ACC)
    else:
        carry = tl.zeros([BLOCK_H], dtype=ACC)
    # The walk's last position is the forward's first step, whose previous state is h0: it runs after the
    # loop, so the loop's loads need no per-step test.
    for p in tl.range(first, tl.minimum(last, steps - 1), num_stages=NUM_STAGES):
        row = (row0 + p * dstep).to(tl.int64)
        h_prev = tl.load(out_base + (row + dstep) * stride_ot, mask=mask, other=0.0).to(ACC)
        carry = _backward_step(
            g_base + row * stride_gt,
            f_base + row * stride_ft,
            x_base + row * stride_xt,
            df_base + row * stride_dft,
            dx_base + row * stride_dxt,
            h_prev,
            carry,
            mask,
            ACC,
        )
    if last == steps:
        if HAS_H0:
            h_prev = tl.load(h0_ptr + b * stride_hb + cols * stride_hh, mask=mask, other=0.0).to(ACC)
        else:
            h_prev = tl.zeros([BLOCK_H], dtype=ACC)
        row = (row0 + (steps - 1) * dstep).to(tl.int64)
        carry = _backward_step(
            g_base + row * stride_gt,
            f_base + row * stride_ft,
            x_base + row * stride_xt,
            df_base + row * stride_dft,
            dx_base + row * stride_dxt,
            h_prev,
            carry,
            mask,
            ACC,
        )
        tl.store(dh0_ptr + b * stride_d0b + cols * stride_d0h, carry.to(dh0_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["steps", "chunk_steps", "row0", "stride_gb", "stride_fb"])
def _backward_summary_kernel(
    dout_ptr,
    f_ptr,
    decay_ptr,
    state_ptr,
    steps,
    chunk_steps,
    row0,
    dstep,
    hidden,
    stride_gt,
    stride_gb,
    stride_gh,
    stride_ft,
    stride_fb,
    stride_fh,
    ALIGN: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Per chunk of the backward walk: the carry it passes on from a zero start, and the product of 1 - f."""
    hidden = _aligned(hidden, ALIGN)
    stride_gt = _aligned(stride_gt, ALIGN)
    stride_gb = _aligned(stride_gb, ALIGN)
    stride_ft = _aligned(stride_ft, ALIGN)
    stride_fb = _aligned(stride_fb, ALIGN)
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden
    cols = cols.to(tl.int64)
    chunk = tl.program_id(2)
    first = chunk * chunk_steps
    last = tl.minimum(first + chunk_steps, steps)
    g_base = dout_ptr + b * stride_gb + cols * stride_gh
    f_base = f_ptr + b * stride_fb + cols * stride_fh
    carry = tl.zeros([BLOCK_H], dtype=ACC)
    decay = tl.full([BLOCK_H], 1.0, dtype=ACC)
    for p in tl.range(first, last, num_stages=NUM_STAGES):
        row = (row0 + p * dstep).to(tl.int64)
        g = tl.load(g_base + row * stride_gt, mask=mask, other=0.0).to(ACC) + carry
        f = tl.load(f_base + row * stride_ft, mask=mask, other=0.0).to(ACC)
        carry = (1.0 - f) * g
        decay = decay * (1.0 - f)
    summary = (chunk.to(tl.int64) * tl.num_programs(0) + b) * hidden + cols
    tl.store(decay_ptr + summary, decay, mask=mask)
    tl.store(state_ptr + summary, carry, mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Launchers: tensors in, tensors out. Operands are (T, B, H) views of any strides.


def _block_h(hidden: int, dtype: torch.dtype) -> int:
    """Columns per program. Half types take at least two per thread: a thread's copy into shared memory
    (the software pipeline's prefetch) moves at least 4 bytes, so one 2-byte column per thread would load
    without prefetching."""
    minimum = 2 * _MIN_BLOCK_H if dtype.itemsize == 2 else _MIN_BLOCK_H
    return min(_MAX_BLOCK_H, max(minimum, triton.next_power_of_2(hidden)))


def _acc_dtype(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """The accumulation dtype, in torch's and in Triton's spelling: float64 stays, the rest use float32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _on_device(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """Launch on the tensors' GPU, not the current one (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _strides(t: Tensor | None, n: int) -> tuple[int, ...]:
    return (0,) * n if t is None else tuple(t.stride())


def _chunk_carries(
    summary_kernel: triton.JITFunction,
    operands: tuple[Tensor, Tensor],
    init: Tensor | None,
    row0: int,
    dstep: int,
    chunk: int,
) -> Tensor:
    """Launches (1) and (2) of the chunked scan: the state entering each chunk, ``(chunks, B, H)``.

    ``operands`` are the two ``(T, B, H)`` tensors the summary reads (f and x, or dout and f); ``init`` the
    state entering the first chunk (h0), or ``None`` for zeros.
    """
    steps, batch, hidden = operands[0].shape
    acc_torch, acc = _acc_dtype(operands[0].dtype)
    chunks = triton.cdiv(steps, chunk)
    block_h = _block_h(hidden, operands[0].dtype)
    column_blocks = triton.cdiv(hidden, block_h)
    decay = torch.empty((chunks, batch, hidden), dtype=acc_torch, device=operands[0].device)
    carries = torch.empty_like(decay)
    summary_kernel[(batch, column_blocks, chunks)](
        *operands,
        decay,
        carries,
        steps,
        chunk,
        row0,
        dstep,
        hidden,
        *operands[0].stride(),
        *operands[1].stride(),
        ALIGN=_alignment(hidden, *operands),
        ACC=acc,
        BLOCK_H=block_h,
        NUM_STAGES=_NUM_STAGES,
        num_warps=1,
    )
    _combine_chunks_kernel[(batch, column_blocks)](
        decay,
        carries,
        decay if init is None else init,
        chunks,
        batch,
        hidden,
        *_strides(init, 2),
        HAS_INIT=init is not None,
        ACC=acc,
        BLOCK_H=block_h,
        num_warps=1,
    )
    return carries


def forward(f: Tensor, x: Tensor, h0: Tensor | None, out: Tensor, reverse: bool) -> None:
    """Write the ForgetMult of ``(T, B, H)`` views ``f``, ``x`` into ``out`` (same shape, any strides).

    ``h0`` is ``(B, H)`` of any strides, or ``None`` for zeros.
    """
    steps, batch, hidden = x.shape
    row0, dstep = (steps - 1, -1) if reverse else (0, 1)
    block_h = _block_h(hidden, x.dtype)
    chunk = choose_chunk(steps, batch, hidden)
    init: Tensor | None
    with _on_device(x):
        if 0 < chunk < steps:
            init = _chunk_carries(_forward_summary_kernel, (f, x), h0, row0, dstep, chunk)
            init_strides = tuple(init.stride())
        else:
            # One chunk: the sequential kernel, started from h0 (the same state for the only chunk).
            chunk, init, init_strides = steps, h0, (0, *_strides(h0, 2))
        _forward_kernel[(batch, triton.cdiv(hidden, block_h), triton.cdiv(steps, chunk))](
            f,
            x,
            out,
            x if init is None else init,
            steps,
            chunk,
            row0,
            dstep,
            hidden,
            *f.stride(),
            *x.stride(),
            *out.stride(),
            *init_strides,
            HAS_INIT=init is not None,
            ALIGN=_alignment(hidden, f, x, out),
            ACC=_acc_dtype(x.dtype)[1],
            BLOCK_H=block_h,
            NUM_STAGES=_NUM_STAGES,
            num_warps=1,
        )


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

    ``out`` is the forward result and ``dout`` the incoming gradient, both of any strides (stride 0 too:
    the kernels read through the strides, so an expanded gradient is read in place).
    """
    steps, batch, hidden = x.shape
    # The backward walks against the forward: from the forward's last row towards its first.
    row0, dstep = (0, 1) if reverse else (steps - 1, -1)
    block_h = _block_h(hidden, x.dtype)
    chunk = choose_chunk(steps, batch, hidden)
    with _on_device(x):
        carries = None
        if 0 < chunk < steps:
            carries = _chunk_carries(_backward_summary_kernel, (dout, f), None, row0, dstep, chunk)
        else:
            chunk = steps
        _backward_kernel[(batch, triton.cdiv(hidden, block_h), triton.cdiv(steps, chunk))](
            dout,
            f,
            x,
            out,
            x if h0 is None else h0,
            x if carries is None else carries,
            df,
            dx,
            dh0,
            steps,
            chunk,
            row0,
            dstep,
            hidden,
            *dout.stride(),
            *f.stride(),
            *x.stride(),
            *out.stride(),
            *_strides(h0, 2),
            *_strides(carries, 3),
            *df.stride(),
            *dx.stride(),
            *dh0.stride(),
            HAS_H0=h0 is not None,
            HAS_INIT=carries is not None,
            ALIGN=_alignment(hidden, dout, f, x, out, df, dx),
            ACC=_acc_dtype(x.dtype)[1],
            BLOCK_H=block_h,
            NUM_STAGES=_NUM_STAGES,
            num_warps=1,
        )
