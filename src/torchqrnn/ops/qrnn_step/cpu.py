"""One inference step of a layer on CPU, projection and pooling fused in one numba kernel.

A streaming call (T = 1, batch 1) is a matrix-vector product and a few hundred element-wise operations;
through ``F.linear`` and the pooling kernel it costs several times the product (dispatch, allocation,
conversions). Here each thread takes a block of hidden units and computes, for every batch row, the dot
products of its ``Z``, ``F`` (``O``, ``I``) weight rows with the window, then the gates and the new state.
A batch-1 step runs on the calling thread: a 320-unit layer's step is 300 k multiply-adds, far below what
pays for waking another thread, and on a busy machine a woken thread that is not scheduled held the step
for milliseconds (measured with two busy processes on the two cores: p99 of 88 ms with two threads against
44 ms on one, which is also ``nn.LSTMCell``'s; median 123 us against 61 us). Larger batches split the units
into jobs that threads claim one at a time (``run_jobs`` in ``ops/_cpu.py``).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from .._cpu import JOBS_PER_THREAD, NO_STATE, claim, run_jobs, sigmoid, tanh
from .._numba_cache import njit

# Dots may be reassociated (vectorised sums): a step's rounding differs from F.linear's by a few ulps. No
# ``contract`` (nor ``arcp``): LLVM fused multiply-adds differently in a kernel compiled in the process and
# the same kernel loaded from the cache (see ``ops/qrnn_pool/cpu.py``); the sums are memory-bound anyway
# (the same speed without it, measured at 320 and 640 units).
_FASTMATH = {"reassoc"}
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
# Below this many multiply-adds (batch x weights: about 200 us of work) a step stays on the calling thread.
_PARALLEL_MIN_MACS = 1 << 22


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _dots(w_a, w_b, w_c, x, a, b, c):  # pragma: no cover - numba
    # three dot products in one pass: three independent chains of multiply-adds keep the FMA units busy
    for k in range(x.shape[0]):
        x_k = x[k]
        a += w_a[k] * x_k
        b += w_b[k] * x_k
        c += w_c[k] * x_k
    return a, b, c


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _dot(w, x, total):  # pragma: no cover - numba
    for k in range(x.shape[0]):
        total += w[k] * x[k]
    return total


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath=_FASTMATH)
def _units(weight, bias, source, h0, out, hn, u0, u1, hidden, scale, one, flags):  # pragma: no cover - numba
    output_gate, input_gate, has_h0 = flags
    o_row = 2 * hidden if output_gate else hidden  # without an output gate: the F row again, unused
    i_row = weight.shape[0] - hidden
    for u in range(u0, u1):
        for b in range(source.shape[0]):
            x = source[b]
            w_z, w_f, w_o = weight[u], weight[hidden + u], weight[o_row + u]
            a_z, a_f, a_o = _dots(w_z, w_f, w_o, x, bias[u], bias[hidden + u], bias[o_row + u])
            z = tanh(a_z)
            f = sigmoid(a_f) * scale
            i = sigmoid(_dot(weight[i_row + u], x, bias[i_row + u])) if input_gate else f
            c = i * z + (one - f) * (h0[b, u] if has_h0 else 0 * one)
            hn[b, u] = c
            out[b, u] = sigmoid(a_o) * c if output_gate else c


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath=_FASTMATH)
def _step_jobs(weight, bias, source, h0, out, hn, hidden, per_job, scale, one, flags, counter):
    # pragma: no cover - numba
    """Blocks of ``per_job`` units, claimed one at a time (one block of all units on a single thread)."""
    while True:
        u0 = claim(counter) * per_job
        if u0 >= hidden:
            return
        _units(weight, bias, source, h0, out, hn, u0, min(hidden, u0 + per_job), hidden, scale, one, flags)


# id(parameter) -> (its data pointer, a numpy view); an entry leaves with its parameter (weakref.finalize).
_weight_views: dict[int, tuple[int, np.ndarray]] = {}


def _weight_view(t: Tensor) -> np.ndarray:
    """A numpy view of a parameter, kept from one step to the next while its storage stays the same.

    The view's base is a detached alias, not the parameter object, so the cache does not keep a dropped
    parameter alive; a parameter whose data is replaced (``.data = ...``, ``.to()``) gets a new view.
    """
    key, pointer = id(t), t.data_ptr()
    cached = _weight_views.get(key)
    if cached is not None and cached[0] == pointer:
        return cached[1]
    if cached is None:
        weakref.finalize(t, _weight_views.pop, key, None)
    view = t.detach().numpy()
    _weight_views[key] = (pointer, view)
    return view


def step(
    source: Tensor,
    weight: Tensor,
    bias: Tensor,
    h0: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    forget_scale: float,
    output_shape: tuple[int, ...],
    state_shape: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """``(output, state)`` of the shapes asked for (B rows of H) from contiguous ``source`` (B rows of K).

    The results are allocated as numpy arrays and wrapped, not allocated as tensors and unwrapped: at a
    streaming step's scale each conversion is a measurable share of the step.
    """
    hidden = output_shape[-1]
    threads = torch.get_num_threads()
    if threads > 1 and source.shape[0] * weight.numel() < _PARALLEL_MIN_MACS:
        threads = 1
    per_job = hidden if threads == 1 else -(-hidden // (JOBS_PER_THREAD * threads))
    np_dtype = _NP_DTYPES[source.dtype]
    out, hn = np.empty(output_shape, np_dtype), np.empty(state_shape, np_dtype)
    args = (
        _weight_view(weight),
        _weight_view(bias),
        source.numpy().reshape(-1, weight.shape[1]),
        NO_STATE[source.dtype] if h0 is None else h0.numpy().reshape(-1, hidden),
        out.reshape(-1, hidden),
        hn.reshape(-1, hidden),
        hidden,
        per_job,
        np_dtype(forget_scale),
        np_dtype(1),
        (output_gate, input_gate, h0 is not None),
    )
    run_jobs(_step_jobs, args, threads)
    return torch.from_numpy(out), torch.from_numpy(hn)
