"""One inference step of a layer on CPU: the platform's matrix-vector product, then the gates in one kernel.

A streaming call (T = 1, batch 1) is a matrix-vector product and a few hundred element-wise operations. The
product is memory-bound and the platform's BLAS (MKL, through ``torch.addmv`` / ``torch.addmm``) does it at
the speed of the memory on any x86 CPU, on torch's own threads (which it wakes cheaply); a hand-written
serial matvec lost to it by 2.5-3x on an Intel Xeon (it was tuned on an AMD EPYC). So the step is that
product, and one numba kernel for what is cheap to fuse: the activations
and the state update, the pooling kernel's arithmetic exactly (``ops/qrnn_pool/cpu.py``), serial (a few
hundred elements).

The product reads the weights as stored: MKL's matrix-vector product of a column-major copy was faster on
an Intel Xeon at one thread (960 x 320 weights: 11.0 us against 18.5 us; not at 960 x 640 or two threads),
but a cached copy goes stale when the weights change in place through ``.data`` (which moves no version
counter), a silent wrong result; so there is no copy. Under ``torch.use_deterministic_algorithms(True)`` the
product is the generic path's ``F.linear``, and a step equals the generic path bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .._blas import AVAILABLE as _BLAS_IN_KERNEL
from .._blas import gemv
from .._cpu import NO_STATE, sigmoid, tanh
from .._numba_cache import njit

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", inline="always")
def _pool_row(row, h0, b, out, hn, hidden, scale, one, flags):  # pragma: no cover - numba
    """The pooling of batch row ``b`` from its pre-activation gates ``row`` (G*H): ``_forward_row`` of the
    pooling kernel, term for term, so that a step rounds as the generic path's pooling does."""
    output_gate, input_gate, has_h0 = flags
    i_row = row.shape[0] - hidden
    for u in range(hidden):
        z = tanh(row[u])
        f = sigmoid(row[hidden + u]) * scale
        i = sigmoid(row[i_row + u]) if input_gate else f
        c = i * z + (one - f) * (h0[b, u] if has_h0 else one - one)
        hn[b, u] = c
        out[b, u] = sigmoid(row[2 * hidden + u]) * c if output_gate else c


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _gates(gates, h0, out, hn, hidden, scale, one, flags):  # pragma: no cover - numba
    """The pooling of every row of ``gates`` (B, G*H), computed by the caller's product."""
    for b in range(gates.shape[0]):
        _pool_row(gates[b], h0, b, out, hn, hidden, scale, one, flags)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _fused(weight, bias, x, h0, out, hn, hidden, scale, one, flags):  # pragma: no cover - numba
    """A batch-1 step in one call: the gates ``bias + weight @ x`` by torch's BLAS (``_blas.gemv``, as
    ``torch.addmv`` computes them), then their pooling."""
    row = bias.copy()
    gemv(weight, x, row)
    _pool_row(row, h0, 0, out, hn, hidden, scale, one, flags)


def _product(source: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``source @ weight.T + bias`` ``(B, G*H)``; a batch of one as a matrix-vector product (``addmv``: 1.1x
    faster than ``F.linear``'s one-row matrix product, measured), except under deterministic algorithms."""
    if source.shape[0] == 1 and not torch.are_deterministic_algorithms_enabled():
        product = torch.mv(weight, source[0]) if bias is None else torch.addmv(bias, weight, source[0])
        return product.unsqueeze(0)
    return F.linear(source, weight, bias)  # the generic path's product, exactly


def step(
    source: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    h0: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    forget_scale: float,
    output_shape: tuple[int, ...],
    state_shape: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """``(output, state)`` of the shapes asked for (B rows of H) from ``source`` (B rows of K).

    The results are allocated as numpy arrays and wrapped, not allocated as tensors and
    unwrapped: at a streaming step's scale each conversion is a measurable share of the step.
    """
    hidden = output_shape[-1]
    np_dtype = _NP_DTYPES[source.dtype]
    out, hn = np.empty(output_shape, np_dtype), np.empty(state_shape, np_dtype)
    state = NO_STATE[source.dtype] if h0 is None else h0.contiguous().numpy().reshape(-1, hidden)
    options = (np_dtype(forget_scale), np_dtype(1), (output_gate, input_gate, h0 is not None))
    rows = source.numel() // source.shape[-1]
    if rows == 1 and _BLAS_IN_KERNEL and not torch.are_deterministic_algorithms_enabled():
        _fused(
            weight.contiguous().numpy(),
            np.zeros(weight.shape[0], np_dtype) if bias is None else bias.numpy(),
            source.contiguous().numpy().reshape(-1),
            state,
            out.reshape(1, hidden),
            hn.reshape(1, hidden),
            hidden,
            *options,
        )
    else:
        gates = _product(source.reshape(rows, source.shape[-1]), weight, bias)
        _gates(gates.numpy(), state, out.reshape(-1, hidden), hn.reshape(-1, hidden), hidden, *options)
    return torch.from_numpy(out), torch.from_numpy(hn)
