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

from collections.abc import Sequence

import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic, overload
from torch import Tensor
from torch.nn import functional as F

from .._blas import AVAILABLE as _BLAS_IN_KERNEL
from .._blas import BF16_AVAILABLE as _BF16_IN_KERNEL
from .._blas import gemv, gemv_bf16
from .._cpu import NO_STATE, as_numpy, load, sigmoid, store, tanh
from .._numba_cache import njit

# Each dtype's storage as numba sees it (half types as 16-bit integers), and its compute dtype.
_STORAGE = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bfloat16: np.uint16,
    torch.float16: np.int16,
}
_COMPUTE = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bfloat16: np.float32,
    torch.float16: np.float32,
}


def _accumulate(weight, source, gates):  # pragma: no cover - numba
    """``gates += weight @ source`` by the BLAS routine for the weights' dtype (see ``ops/_blas.py``)."""


@overload(_accumulate, inline="always")
def _accumulate_overload(weight, source, gates):  # pragma: no cover - numba
    if weight.dtype == types.uint16:  # bfloat16 storage
        return lambda weight, source, gates: gemv_bf16(weight, source, gates)
    return lambda weight, source, gates: gemv(weight, source, gates)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", inline="always")
def _pool_row(row, c_prev, out, hn, hidden, scale, one, output_gate, input_gate):  # pragma: no cover - numba
    """The pooling of one batch row from its pre-activation gates ``row`` (G*H) and previous state
    ``c_prev`` (H): ``_forward_row`` of the pooling kernel, term for term, so that a step rounds as the
    generic path's pooling does. Half types in their storage (``_cpu.load`` and ``store``), float32
    arithmetic. Each gate is its own slice, as there, so that LLVM vectorises the loop."""
    z_in, f_in = row[:hidden], row[hidden : 2 * hidden]
    o_in, i_in = row[2 * hidden : 3 * hidden], row[row.shape[0] - hidden :]
    for j in range(hidden):
        z = tanh(load(z_in[j]))
        f = sigmoid(load(f_in[j])) * scale
        i = sigmoid(load(i_in[j])) if input_gate else f
        c = i * z + (one - f) * load(c_prev[j])
        store(hn, j, c)
        if output_gate:
            store(out, j, sigmoid(load(o_in[j])) * c)
        else:
            store(out, j, c)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _gates(gates, h0, out, hn, hidden, scale, one, flags):  # pragma: no cover - numba
    """The pooling of every row of ``gates`` (B, G*H), computed by the caller's product."""
    output_gate, input_gate, has_h0 = flags
    zeros = np.zeros(hidden, out.dtype)  # the state before a first step (zero bits: 0.0 in every dtype)
    for b in range(gates.shape[0]):
        c_prev = h0[b] if has_h0 else zeros
        _pool_row(gates[b], c_prev, out[b], hn[b], hidden, scale, one, output_gate, input_gate)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def step_stack(plan, scales, like, x, out):  # pragma: no cover - numba
    """One batch-1 step through a stack of layers, in one call: each layer builds its window from its
    input and context, takes its gates ``bias + W source`` from the platform's BLAS (``_accumulate``), pools
    them from its cell state and hands its output up (rounded to the weights' dtype, as a layer's output is).

    The layers' tensors are addressed through one int64 array (each argument costs the call's dispatch
    time): per layer ``l``, ``plan[l]`` = the data addresses of its weight (G*H, w*I) C-contiguous and bias
    (G*H,) (0: none); G*H, w*I, window, backward, output_gate, input_gate; the addresses of its window
    context (w - 1, 1, I) (0: zeros) and of where the next one goes (0 for window 1); of its cell state (H,)
    (0: zeros) and of where the new one goes. A context or state may be updated in place (the same address
    in and out). The tensors behind the addresses have ``x``'s dtype; the caller keeps them alive and
    checks them before each call (``StackPlan.holds``); ``like`` is an empty array of their dtype (their
    elements' type: half types as 16-bit integers). ``scales`` the forget scales, then 1 (the compute dtype).
    ``x`` and ``out`` are the addresses of the first layer's input (I elements) and of the last layer's output
    (H elements): a tensor's address costs a tenth of a numpy view of it.
    """
    last = plan.shape[0] - 1
    hidden = plan[last, 2] // (2 + plan[last, 6] + plan[last, 7])
    layer_input = numba.carray(_at(x, like), plan[0, 3] // plan[0, 4])
    output = numba.carray(_at(out, like), hidden)
    one = scales[scales.shape[0] - 1]
    for layer in range(plan.shape[0]):
        rows, cols, window, backward, output_gate, input_gate = plan[layer, 2:8]
        size = cols // window
        weight = numba.carray(_at(plan[layer, 0], like), (rows, cols))
        bias = numba.carray(_at(plan[layer, 1], like), rows) if plan[layer, 1] else np.zeros(rows, like.dtype)
        if plan[layer, 8]:
            context = numba.carray(_at(plan[layer, 8], like), (window - 1, 1, size))
        else:
            context = np.zeros((window - 1, 1, size), like.dtype)
        next_context = numba.carray(_at(plan[layer, 9], like), (window - 1, 1, size))
        c_new = numba.carray(_at(plan[layer, 11], like), hidden)
        if not plan[layer, 10]:
            c_prev = np.zeros(hidden, like.dtype)
        elif plan[layer, 10] == plan[layer, 11]:
            # in place: read a copy, or the gates' loop would find its input and output overlapping and
            # run unvectorised (about 2 us at 320 units, measured)
            c_prev = c_new.copy()
        else:
            c_prev = numba.carray(_at(plan[layer, 10], like), hidden)
        layer_output = output if layer == last else np.empty(hidden, like.dtype)
        gates = np.empty(rows, scales.dtype)  # float32 for bfloat16 weights
        _layer_step(
            weight, bias, layer_input, context, next_context, gates, c_prev, c_new, layer_output, window,
            backward, output_gate, input_gate, scales[layer], one,
        )  # fmt: skip
        layer_input = layer_output


@intrinsic
def _at(typingctx, address, like):  # pragma: no cover - numba
    """The pointer to ``address`` (an integer) typed as ``like``'s elements."""
    if not (isinstance(address, types.Integer) and isinstance(like, types.Array)):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(like.dtype)(address, like), codegen


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", inline="always")
def _layer_step(
    weight, bias, layer_input, context, next_context, gates, c_prev, c_new, out, window, backward,
    output_gate, input_gate, scale, one,
):  # fmt: skip  # pragma: no cover - numba
    """One layer's batch-1 step: its window ``[x_t; x_{t-1}; ...]`` (``[x_t; x_{t+1}; ...]`` backward) from
    ``layer_input`` (I) and ``context`` (w - 1, 1, I); the context of the next step into ``next_context``,
    taken from the window, so that it may be ``context`` itself (updated in place); the gates ``bias + W
    source`` (``_accumulate``) into ``gates`` (G*H, the compute dtype); their pooling from ``c_prev`` into
    ``c_new`` (which may be ``c_prev``: each element is read before it is written) and ``out``."""
    size = layer_input.shape[0]
    source = np.empty(window * size, weight.dtype)
    source[:size] = layer_input
    for k in range(1, window):
        # the context ends with x_{t-1} (forward); backward it starts with x_{t+1}
        source[k * size : (k + 1) * size] = context[k - 1, 0] if backward else context[window - 1 - k, 0]
    for r in range(window - 1):
        # forward the next context is x_{t-w+2} .. x_t, window blocks w-2 .. 0; backward x_t .. x_{t+w-2}
        block = r if backward else window - 2 - r
        next_context[r, 0] = source[block * size : (block + 1) * size]
    for j in range(bias.shape[0]):
        gates[j] = load(bias[j])
    _accumulate(weight, source, gates)
    _pool_row(gates, c_prev, out, c_new, out.shape[0], scale, one, output_gate, input_gate)


def _product(source: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``source @ weight.T + bias`` ``(B, G*H)``; a batch of one as a matrix-vector product (``addmv``: 1.1x
    faster than ``F.linear``'s one-row matrix product, measured), except under deterministic algorithms."""
    if source.shape[0] == 1 and not torch.are_deterministic_algorithms_enabled():
        product = torch.mv(weight, source[0]) if bias is None else torch.addmv(bias, weight, source[0])
        return product.unsqueeze(0)
    return F.linear(source, weight, bias)  # the generic path's product, exactly


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU at half its cost (a numpy allocation, wrapped: 0.8 us
    against 1.6 us at a streaming step's sizes, measured; the keyword argument alone costs 0.8 us)."""
    return _tensor(np.empty(shape, _STORAGE[dtype]), dtype)


def _tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    """The tensor of ``dtype`` over a numpy array of its storage (half types: 16-bit integers)."""
    t = torch.from_numpy(array)
    return t if t.dtype == dtype else t.view(dtype)


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
    """``(output, state)`` of the shapes asked for (B rows of H) from ``source`` (B rows of K): torch's
    product (a batch of one by :func:`stack_step` with one window-1 layer instead, where it can), then the
    gates kernel.

    The results are allocated as numpy arrays and wrapped, not allocated as tensors and unwrapped: at a
    streaming step's scale each conversion is a measurable share of the step.
    """
    hidden = output_shape[-1]
    rows = source.numel() // source.shape[-1]
    if rows == 1 and stack_available(source.dtype):
        plan = StackPlan([(weight, bias)], [(1, False, output_gate, input_gate)], [forget_scale])
        state = None if h0 is None else h0.reshape(1, hidden)
        output, states, _ = stack_step(plan, source, [None], state, output_shape, state_shape)
        return output, states
    gates = _product(source.reshape(rows, source.shape[-1]), weight, bias)
    output, states = pool_step(gates, h0, output_gate, input_gate, forget_scale)
    return output.view(output_shape), states.view(state_shape)


def pool_step(
    gates: Tensor, h0: Tensor | None, output_gate: bool, input_gate: bool, forget_scale: float
) -> tuple[Tensor, Tensor]:
    """See ``qrnn_step.pool_step``: the gates kernel on one step's gates, any layout of its B rows."""
    hidden = gates.shape[-1] // (2 + output_gate + input_gate)
    batch = gates.numel() // gates.shape[-1]
    storage, compute = _STORAGE[gates.dtype], _COMPUTE[gates.dtype]
    out, hn = np.empty((*gates.shape[:-1], hidden), storage), np.empty((batch, hidden), storage)
    rows_h0 = NO_STATE[gates.dtype] if h0 is None else as_numpy(h0.contiguous()).reshape(batch, hidden)
    flags = (output_gate, input_gate, h0 is not None)
    rows = as_numpy(gates.reshape(batch, gates.shape[-1]).contiguous())
    _gates(rows, rows_h0, out.reshape(batch, hidden), hn, hidden, compute(forget_scale), compute(1), flags)
    return _tensor(out, gates.dtype), _tensor(hn, gates.dtype)


def stack_available(dtype: torch.dtype) -> bool:
    """Whether :func:`stack_step` may run for weights of ``dtype``: the BLAS routine for it is reachable
    from the kernel (torch's sgemv/dgemv, MKL's bfloat16 product), and no deterministic algorithms are asked
    for (then a step takes the generic path's ``F.linear``, for the same bits)."""
    reachable = _BF16_IN_KERNEL if dtype == torch.bfloat16 else _BLAS_IN_KERNEL and dtype in _FLOATS
    return reachable and not torch.are_deterministic_algorithms_enabled()


_FLOATS = (torch.float32, torch.float64)


class StackPlan:
    """What :func:`step_stack` needs of a stack of layers that does not change from step to step: the
    addresses of the weights and biases (read in place: in-place changes, ``.data`` ones included, are
    seen; the tensors are held here, so their storage lives as long as the plan), the layers' options and
    forget scales, and the shapes of what a step allocates. :meth:`holds` tells whether the plan still
    reads the given parameters' storage."""

    def __init__(
        self,
        parameters: list[tuple[Tensor, Tensor | None]],
        options: list[tuple[int, bool, bool, bool]],
        scales: list[float],
    ) -> None:
        dtype = self.dtype = parameters[0][0].dtype
        storage, compute = _STORAGE[dtype], _COMPUTE[dtype]
        self.parameters = parameters
        self.key = (list(options), list(scales))  # (compared with the callers' lists: no copy a step)
        self.pointers = [(w.data_ptr(), None if b is None else b.data_ptr()) for w, b in parameters]
        # a weight that is not contiguous is read through a copy, which its later changes would miss: such a
        # plan serves one step and is made again for the next
        self.copies = not all(w.is_contiguous() and (b is None or b.is_contiguous()) for w, b in parameters)
        self.kept = [
            (w.detach().contiguous(), None if b is None else b.detach().contiguous()) for w, b in parameters
        ]
        self.plan = np.array(
            [
                (w.data_ptr(), 0 if b is None else b.data_ptr(), w.shape[0], w.shape[1], *o, 0, 0, 0, 0)
                for (w, b), o in zip(self.kept, options, strict=True)
            ],
            np.int64,
        )
        self.scales = np.array([*scales, 1.0], compute)  # (1 last: the kernel's one)
        self.like = np.empty(0, storage)
        hidden = parameters[-1][0].shape[0] // (2 + options[-1][2] + options[-1][3])
        sizes = [w.shape[1] // o[0] for (w, _), o in zip(parameters, options, strict=True)]
        # each layer's context (w - 1, 1, I); a window-1 layer's is empty, and so is the one it returns
        # (shared: it holds nothing)
        self.context_shapes = [(o[0] - 1, 1, size) for o, size in zip(options, sizes, strict=True)]
        self.windowed = any(o[0] > 1 for o in options)
        self.state_bytes = hidden * torch.empty(0, dtype=dtype).element_size()  # (one layer's state)
        self.empty_contexts = (
            [torch.zeros(shape, dtype=dtype) for shape in self.context_shapes] if not self.windowed else []
        )

    def run(
        self,
        x: Tensor,
        contexts: list[Tensor | None],
        h0: Tensor | None,
        output_shape: tuple[int, ...],
        state_shape: tuple[int, ...],
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """:func:`stack_step` of this plan."""
        return stack_step(self, x, contexts, h0, output_shape, state_shape)

    def addressed(
        self,
        contexts: Sequence[Tensor | None],
        next_contexts: Sequence[Tensor],
        h0: Tensor | None,
        hn: Tensor,
    ) -> np.ndarray:
        """The plan with one step's buffers for :func:`step_stack`: per layer, the context read
        (``contexts[l]``, None: zeros) and where the next one goes (``next_contexts[l]``), the state read
        (layer ``l``'s row of ``h0``, None: zeros) and where the new one goes (its row of ``hn``); a buffer
        read and written in place is passed as both. Contiguous tensors of the plan's dtype, which the caller
        keeps alive through the step."""
        layers = self.plan.copy()
        for layer, (c, n) in enumerate(zip(contexts, next_contexts, strict=True)):
            if n.numel():  # (element by element: a slice assignment from a tuple costs a microsecond)
                layers[layer, 8] = 0 if c is None else c.data_ptr()
                layers[layer, 9] = n.data_ptr()
        for layer in range(len(layers)):
            offset = layer * self.state_bytes
            layers[layer, 10] = 0 if h0 is None else h0.data_ptr() + offset
            layers[layer, 11] = hn.data_ptr() + offset
        return layers

    def holds(
        self,
        parameters: list[tuple[Tensor, Tensor | None]],
        options: list[tuple[int, bool, bool, bool]],
        scales: list[float],
    ) -> bool:
        """Whether the plan was made for these parameters, with their storage where it was, and options."""
        if self.copies or self.key != (options, scales):
            return False
        for (w, b), (w0, b0), (pw, pb) in zip(parameters, self.parameters, self.pointers, strict=True):
            if w is not w0 or b is not b0 or w.data_ptr() != pw or (b is not None and b.data_ptr() != pb):
                return False
        return True


def stack_step(
    plan: StackPlan,
    x: Tensor,
    contexts: list[Tensor | None],
    h0: Tensor | None,
    output_shape: tuple[int, ...],
    state_shape: tuple[int, ...],
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One batch-1 step through the planned stack: ``x`` (I elements); ``contexts[l]`` (w_l - 1, 1, I_l)
    or None for zeros; ``h0`` (L * H elements) or None. Returns ``(output, states, next contexts (w_l - 1,
    1, I_l))``, the first two of the shapes asked for (H and L * H elements)."""
    out, hn = empty(output_shape, plan.dtype), empty(state_shape, plan.dtype)
    if plan.windowed:
        returned = [empty(shape, plan.dtype) for shape in plan.context_shapes]
        # the given contexts, contiguous, alive through the call
        given: Sequence[Tensor | None] = [None if c is None else c.contiguous() for c in contexts]
    else:
        returned = given = plan.empty_contexts  # (window 1 everywhere: no context read or written)
    states = None if h0 is None else h0.contiguous()  # (alive through the call)
    layers = plan.addressed(given, returned, states, hn)
    source = x.contiguous()
    step_stack(layers, plan.scales, plan.like, source.data_ptr(), out.data_ptr())
    return out, hn, returned
