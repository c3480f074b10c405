"""What the numba CPU kernels share: how tensors are handed to numba, the thread schedule, and activations.

Imported only by the kernel modules (``ops/*/cpu.py``), which the dispatchers import on first use.

How the kernels see memory: every ``(T, B, ...)`` operand is handed over as the flat 1-D numpy view of the
storage it spans, plus, per operand, three integers in a ``layout`` table: the offset of the first row the
kernel *processes*, the step to the next processed row (negative when walking time backwards), and the batch
stride. The last dimension must have unit stride (the launcher copies the rare operand without it), which
lets LLVM vectorise the inner loop over it. A job is one ``(batch, column chunk)`` segment walked over all
``T``; jobs run in parallel. Kernels slice rows (``f[o:o + n]``) rather than index ``f[o + j]``: numba
cannot prove ``o + j`` non-negative and adds wraparound checks that block vectorisation (measured 12x).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from numba import types
from numba.extending import overload
from torch import Tensor

# Below this many elements a parallel launch costs more than it saves.
PARALLEL_MIN_NUMEL = 1 << 16
# Columns per job: shorter rows pay the per-row slicing and alias checks on too little work (measured:
# T=1024, B=1, H=320 split in four jobs of 80 ran slower than one serial job); longer ones help little.
MIN_CHUNK, MAX_CHUNK = 256, 8192

# What the kernels compute in; half types are converted to float32 around them.
KERNEL_DTYPES = (torch.float32, torch.float64)
# Stand-ins for an absent (B, H) state, so that numba sees one array type whether or not there is one.
NO_STATE: dict[torch.dtype, np.ndarray] = {
    torch.float32: np.zeros((1, 1), np.float32),
    torch.float64: np.zeros((1, 1), np.float64),
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in KERNEL_DTYPES else torch.float32


def flat(t: Tensor) -> np.ndarray:
    """The 1-D numpy view of the storage that ``t`` spans, starting at its first element."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.detach().as_strided((span,), (1,)).numpy()


def unit_last_stride(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` with the unit last-dim stride that the vector loops read; copies only if needed."""
    t = t.to(dtype)
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def state_array(state: Tensor | None, dtype: torch.dtype) -> np.ndarray:
    """A ``(B, H)`` state as a contiguous numpy array of ``dtype``, or the stand-in for none."""
    return NO_STATE[dtype] if state is None else state.detach().to(dtype).contiguous().numpy()


def layout_rows(operands: list[Tensor], steps: int, walk_backwards: bool) -> np.ndarray:
    """Per operand: offset of the first processed row, step between processed rows, batch stride."""
    rows: list[int] = []
    for t in operands:
        st, sb = t.stride(0), t.stride(1)
        rows += (st * (steps - 1), -st, sb) if walk_backwards else (0, st, sb)
    return np.array(rows, dtype=np.int64).reshape(len(operands), 3)


MAX_THREADS = numba.config.NUMBA_NUM_THREADS
_threads = threading.local()  # the count this thread last gave numba (numba keeps one per thread)


def use_threads(count: int) -> None:
    """Run numba's parallel kernels on ``count`` threads (torch's setting, so both libraries agree).

    ``numba.set_num_threads`` takes a lock on every call (3-6 us, as much as a streaming step's kernel), so
    it is called only when the count changes.
    """
    if getattr(_threads, "count", MAX_THREADS) != count:
        numba.set_num_threads(count)
        _threads.count = count


def schedule(steps: int, batch: int, hidden: int) -> tuple[bool, int]:
    """(parallel?, column chunk): enough jobs to balance the threads, each long enough to vectorise well."""
    threads = min(torch.get_num_threads(), MAX_THREADS)
    columns = batch * hidden
    if threads == 1 or steps * columns < PARALLEL_MIN_NUMEL or columns < 2 * MIN_CHUNK:
        return False, hidden
    use_threads(threads)
    per_job = -(-columns // (2 * threads))
    chunk = min(hidden, max(MIN_CHUNK, min(MAX_CHUNK, -(-per_job // 16) * 16)))
    return True, chunk


# ---------------------------------------------------------------------------------------------------------
# Activations. LLVM vectorises arithmetic but not calls to libm's tanh/exp, so float32 uses a rational
# minimax approximation of tanh (odd degree-13 numerator over even degree-6 denominator, the form Eigen
# uses; max abs error 3.4e-7 over the float32 range, measured against float64 tanh) and sigmoid(x) =
# 0.5 + 0.5 tanh(x / 2) (max abs error 2.3e-7; absolute, not relative, for large negative x). float64, used
# for gradcheck and by those who ask for precision, calls the exact libm functions.

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


@overload(tanh, inline="always")
def _tanh_overload(x):  # pragma: no cover - numba
    if x == types.float32:

        def rational(x):
            x = min(max(x, -_CLAMP), _CLAMP)
            x2 = x * x
            p = ((((((_N13 * x2 + _N11) * x2 + _N9) * x2 + _N7) * x2 + _N5) * x2 + _N3) * x2 + _N1) * x
            q = ((_D6 * x2 + _D4) * x2 + _D2) * x2 + _D0
            return p / q

        return rational
    return lambda x: math.tanh(x)


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):  # pragma: no cover - numba
    if x == types.float32:
        return lambda x: _HALF32 + _HALF32 * tanh(_HALF32 * x)
    return lambda x: 0.5 + 0.5 * math.tanh(0.5 * x)
