"""What the numba CPU kernels share: how tensors are handed to numba, the thread schedule, and activations.

Imported only by the kernel modules (``ops/*/cpu.py``), which the dispatchers import on first use.

How the kernels see memory: every ``(T, B, ...)`` operand is handed over as the flat 1-D numpy view of the
storage it spans, plus, per operand, three integers in a ``layout`` table: the offset of the first row the
kernel *processes*, the step to the next processed row (negative when walking time backwards), and the batch
stride. The last dimension must have unit stride (the launcher copies the rare operand without it), which
lets LLVM vectorise the inner loop over it. A job is one ``(batch, column chunk)`` segment walked over all
``T``; jobs run in parallel. Kernels slice rows (``f[o:o + n]``) rather than index ``f[o + j]``: numba
cannot prove ``o + j`` non-negative and adds wraparound checks that block vectorisation (measured 12x).

Half types: numba has no bfloat16 and no float16 arrays, so their storage is handed over as uint16 (bfloat16)
or int16 (float16) arrays, and the kernels read and write every element through :func:`load` and
:func:`store`, which convert to and from float32 in registers (LLVM vectorises both). Arithmetic, states and
carries stay in float32; only the stored results are rounded (to nearest even, as ``Tensor.to`` rounds), so a
half call gives what converting its inputs to float32, running the float32 kernel and rounding the results
would give, without those full-size copies.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from torch import Tensor

from . import thresholds
from ._numba_cache import njit

# Below this many elements (T * B * H) a call runs on the calling thread alone: waking a helper costs more
# than it saves (PyTorch's at::parallel_for uses a grain of 32768 elements; a streaming step is far below).
PARALLEL_MIN_NUMEL = thresholds.PARALLEL_MIN_NUMEL
# Columns per job: shorter rows pay the per-row slicing and alias checks on too little work (measured:
# T=1024, B=1, H=320 split in four jobs of 80 ran slower than one serial job); longer ones help little.
MIN_CHUNK, MAX_CHUNK = thresholds.MIN_CHUNK, thresholds.MAX_CHUNK
# Jobs per thread: threads claim jobs one at a time, so a thread that the OS deschedules holds back only the
# job it is on, and the others take the rest.
JOBS_PER_THREAD = 8

# The half types' storage as numba sees it (numba has neither type); float32 and float64 go as they are.
_HALF_STORAGE = {torch.bfloat16: torch.uint16, torch.float16: torch.int16}
# Stand-ins for an absent (B, H) state, so that numba sees one array type whether or not there is one.
NO_STATE: dict[torch.dtype, np.ndarray] = {
    torch.float32: np.zeros((1, 1), np.float32),
    torch.float64: np.zeros((1, 1), np.float64),
    torch.bfloat16: np.zeros((1, 1), np.uint16),
    torch.float16: np.zeros((1, 1), np.int16),
}


def compute_scalar(dtype: torch.dtype, value: float) -> np.floating:
    """``value`` as a numpy scalar of the compute dtype (numba types a kernel's arithmetic by it)."""
    return np.float64(value) if dtype == torch.float64 else np.float32(value)


def as_numpy(t: Tensor) -> np.ndarray:
    """The numpy view of ``t``'s elements (half types as their 16-bit storage), no copy."""
    t = t.detach()
    storage = _HALF_STORAGE.get(t.dtype)
    return (t if storage is None else t.view(storage)).numpy()


def flat(t: Tensor) -> np.ndarray:
    """The 1-D numpy view of the storage that ``t`` spans, starting at its first element."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return as_numpy(t.detach().as_strided((span,), (1,)))


def unit_last_stride(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` with the unit last-dim stride that the vector loops read; copies only if needed.

    A tensor of all-zero strides (the gradient of ``out.sum()``) becomes one row read at stride 0.
    """
    t = t.to(dtype)
    if t.stride(-1) == 1 or t.shape[-1] <= 1:
        return t
    if not any(t.stride()):
        return t[(0,) * (t.dim() - 1)].contiguous().expand(t.shape)
    return t.contiguous()


def state_array(state: Tensor | None, dtype: torch.dtype) -> np.ndarray:
    """A ``(B, H)`` state as a contiguous numpy array of ``dtype``, or the stand-in for none."""
    return NO_STATE[dtype] if state is None else as_numpy(state.detach().to(dtype).contiguous())


def layout_rows(operands: list[Tensor], steps: int, walk_backwards: bool) -> np.ndarray:
    """Per operand: offset of the first processed row, step between processed rows, batch stride."""
    rows: list[int] = []
    for t in operands:
        st, sb = t.stride(0), t.stride(1)
        rows += (st * (steps - 1), -st, sb) if walk_backwards else (0, st, sb)
    return np.array(rows, dtype=np.int64).reshape(len(operands), 3)


def schedule(steps: int, batch: int, hidden: int) -> tuple[int, int]:
    """(threads, column chunk) of a pooling call: one thread below the grain, else enough jobs for every
    thread to claim several, each long enough to vectorise well. Threads follow ``torch.get_num_threads()``.
    """
    threads = torch.get_num_threads()
    columns = batch * hidden
    if threads == 1 or steps * columns < PARALLEL_MIN_NUMEL or columns < 2 * MIN_CHUNK:
        return 1, hidden
    per_job = -(-columns // (JOBS_PER_THREAD * threads))
    chunk = min(hidden, max(MIN_CHUNK, min(MAX_CHUNK, -(-per_job // 16) * 16)))
    jobs = batch * -(-hidden // chunk)
    return min(threads, jobs), chunk


_helpers: ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor:
    global _helpers
    if _helpers is None:
        with _helpers_lock:
            if _helpers is None:
                _helpers = ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1), "torchqrnn-cpu")
    return _helpers


def _forget_helpers() -> None:
    """In a forked child (a DataLoader worker, say) the parent's helper threads do not exist: start anew."""
    global _helpers, _helpers_lock
    _helpers, _helpers_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def run_jobs(kernel: Callable[..., None], args: tuple[Any, ...], threads: int) -> None:
    """Run ``kernel(*args, counter)`` on ``threads`` threads, the caller one of them.

    The kernel claims jobs from ``counter`` (:func:`claim`) until none is left, so the work balances itself:
    a helper that starts late takes fewer jobs or none, and one that has not started when the jobs run out
    is cancelled rather than waited for. (Numba's own ``prange`` splits the work evenly in advance, so a
    descheduled thread held all the others: 3.2x one thread's time with two busy processes beside it.) The
    kernels release the GIL (``nogil``), so the helpers are plain Python threads, one call each.
    """
    counter = np.zeros(1, np.int64)
    if threads <= 1:
        kernel(*args, counter)
        return
    pool = _helper_pool()
    helpers = [pool.submit(kernel, *args, counter) for _ in range(threads - 1)]
    kernel(*args, counter)
    for helper in helpers:
        if not helper.cancel():
            helper.result()


@intrinsic
def claim(typingctx, counter):  # pragma: no cover - numba
    """The next job's index: an atomic fetch-and-add on ``counter[0]`` (an int64 array)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(counter), codegen


# ---------------------------------------------------------------------------------------------------------
# Activations. LLVM vectorises arithmetic but not calls to libm's tanh/exp, so float32 uses a rational
# minimax approximation of tanh (odd degree-13 numerator over even degree-6 denominator, the form Eigen
# uses, evaluated with fused multiply-adds: max abs error 2.7e-7 over the float32 range, measured against
# float64 tanh) and sigmoid(x) = 0.5 + 0.5 tanh(x / 2) (max abs error 1.7e-7; absolute, not relative, for
# large negative x). float64, used for gradcheck and by those who ask for precision, calls libm.

_CLAMP = np.float32(7.90531110763549805)  # tanh is 1 - 2e-7 there; beyond it the rational form drifts
_NUM = [np.float32(c) for c in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16,
)]  # fmt: skip
_DEN = [
    np.float32(c)
    for c in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
]
_N1, _N3, _N5, _N7, _N9, _N11, _N13 = _NUM
_D0, _D2, _D4, _D6 = _DEN
_HALF32 = np.float32(0.5)


def tanh(x: float) -> float:
    """tanh for numba kernels (float32: rational approximation; float64: libm)."""
    return math.tanh(x)


def sigmoid(x: float) -> float:
    """The logistic function for numba kernels, through :func:`tanh`."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@intrinsic
def fma(typingctx, a, b, c):  # pragma: no cover - numba
    """``a * b + c`` rounded once (LLVM's ``llvm.fma``: the FMA instruction, vectorised like any arithmetic).

    The kernels compile without LLVM's ``contract`` flag (the pooling without any fast-math flag), so every
    other operation rounds as written: ``contract`` lets LLVM fuse some multiply-adds and not others, and
    differently from one compilation to the next (a kernel compiled in the process and the same kernel
    loaded from numba's cache gave different bits). Fusing is spelled out instead.
    """
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@overload(tanh, inline="always")
def _tanh_overload(x):  # pragma: no cover - numba
    if x == types.float32:

        def rational(x):
            x = min(max(x, -_CLAMP), _CLAMP)
            x2 = x * x
            p = fma(fma(fma(fma(fma(fma(_N13, x2, _N11), x2, _N9), x2, _N7), x2, _N5), x2, _N3), x2, _N1) * x
            q = fma(fma(fma(_D6, x2, _D4), x2, _D2), x2, _D0)
            return p / q

        return rational
    return lambda x: math.tanh(x)


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):  # pragma: no cover - numba
    if x == types.float32:
        return lambda x: fma(_HALF32, tanh(_HALF32 * x), _HALF32)
    return lambda x: 0.5 + 0.5 * math.tanh(0.5 * x)


# ---------------------------------------------------------------------------------------------------------
# Element access for every kernel dtype: ``load(a[j])`` gives the value in the compute dtype and
# ``store(a, j, v)`` writes ``v`` rounded to ``a``'s dtype. bfloat16 is the upper half of a float32:
# widening is a shift, narrowing adds the rounding bias of round-to-nearest-even before the shift (NaN
# stays a quiet NaN). float16 converts through LLVM's ``half`` type (the F16C / AVX-512 conversion
# instructions on x86).


@intrinsic
def _f32_from_bits(typingctx, bits):  # pragma: no cover - numba
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _bits_from_f32(typingctx, value):  # pragma: no cover - numba
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _f32_from_f16(typingctx, bits):  # pragma: no cover - numba
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def _f16_from_f32(typingctx, value):  # pragma: no cover - numba
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.int16(types.float32), codegen


_SHIFT, _ONE_BIT, _BIAS = np.uint32(16), np.uint32(1), np.uint32(0x7FFF)
_BF16_NAN = np.uint16(0x7FC0)


def load(value: float) -> float:
    """An element read from a kernel array, in the compute dtype (float32 for the half types)."""
    return value


def store(array: np.ndarray, index: int, value: float) -> None:
    """``array[index] = value``, rounded to nearest even into the array's dtype."""
    array[index] = value


def scratch(n: int, like: np.ndarray) -> np.ndarray:
    """Zeros of the compute dtype of ``like``'s elements (a state or carry row)."""
    return np.zeros(n, like.dtype)


@overload(load, inline="always")
def _load_overload(value):  # pragma: no cover - numba
    if value == types.uint16:
        return lambda value: _f32_from_bits(np.uint32(value) << _SHIFT)
    if value == types.int16:
        return lambda value: _f32_from_f16(value)
    return lambda value: value


@overload(store)
def _store_overload(array, index, value):  # pragma: no cover - numba
    if array.dtype == types.uint16:

        def to_bfloat16(array, index, value):
            bits = _bits_from_f32(np.float32(value))
            rounded = np.uint16((bits + _BIAS + ((bits >> _SHIFT) & _ONE_BIT)) >> _SHIFT)
            array[index] = _BF16_NAN if value != value else rounded

        return to_bfloat16
    if array.dtype == types.int16:

        def to_float16(array, index, value):
            array[index] = _f16_from_f32(np.float32(value))

        return to_float16

    def plain(array, index, value):
        array[index] = value

    return plain


@overload(scratch, inline="always")
def _scratch_overload(n, like):  # pragma: no cover - numba
    if like.dtype in (types.uint16, types.int16, types.float32):
        return lambda n, like: np.zeros(n, np.float32)
    return lambda n, like: np.zeros(n, np.float64)


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def load_row(target, source, n):  # pragma: no cover - numba
    """``target[:n] = source[:n]``, ``source`` of any kernel dtype into a compute-dtype row."""
    for j in range(n):
        target[j] = load(source[j])


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def store_row(target, source, n):  # pragma: no cover - numba
    """``target[:n] = source[:n]``, a compute-dtype row stored into ``target``'s dtype."""
    for j in range(n):
        store(target, j, source[j])
