"""One inference step of a QRNN layer: projection and pooling of a single time step, fused.

Streaming inference feeds a layer one step at a time. :func:`qrnn_step` computes that step from the window
``source`` (``[x_t; x_{t-1}; ...]``, shape ``(B, window * I)``) and the layer's weights in one kernel, with
no autograd: it is for inference (``torch.no_grad()``); :class:`~torchqrnn.QRNNLayer` uses it for single
steps on CPU when no gradient is needed, and the two-op path (projection, then
:func:`~torchqrnn.ops.qrnn_pool.qrnn_pool`) otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._dispatch import check_backend, check_state, check_tensor, kernel_module, resolve_backend, shape_str
from ..qrnn_pool import gate_count
from .reference import qrnn_step_reference

__all__ = [
    "PLAN_ATTRIBUTE",
    "cached_plan",
    "fused_step_kernels",
    "pool_step",
    "qrnn_step",
    "qrnn_step_reference",
    "run_step",
    "without_plan",
]

KERNELS = ("cpu",)


def qrnn_step(
    source: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    h0: Tensor | None = None,
    *,
    output_gate: bool = True,
    input_gate: bool = False,
    forget_scale: float = 1.0,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """``(output, cell state)``, both ``(B, H)``, of one step from ``source`` ``(B, K)`` and layer weights.

    ``weight`` is ``(G * H, K)`` with gate rows ``[Z; F; O; I]``, ``bias`` ``(G * H,)`` or None, ``h0`` the
    previous cell state ``(B, H)`` or None for zeros; ``forget_scale`` multiplies ``f`` (zoneout in
    evaluation). No gradient flows: call it under ``torch.no_grad()``.
    """
    owner = "qrnn_step"
    source, weight = check_tensor(owner, "source", source), check_tensor(owner, "weight", weight)
    count = gate_count(output_gate, input_gate)
    if (
        source.dim() != 2
        or weight.dim() != 2
        or weight.shape[1] != source.shape[1]
        or weight.shape[0] % count
    ):
        raise ValueError(
            f"{owner}: expected source (B, K) and weight ({count} * H, K), got {shape_str(source)} and "
            f"{shape_str(weight)}"
        )
    if bias is not None and tuple(check_tensor(owner, "bias", bias).shape) != (weight.shape[0],):
        raise ValueError(f"{owner}: expected bias of shape ({weight.shape[0]},), got {shape_str(bias)}")
    hidden = weight.shape[0] // count
    if h0 is not None:
        h0 = check_state(owner, "h0", h0, (source.shape[0], hidden), source, lambda: f"B = {source.shape[0]}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (source, weight, bias, h0)):
        raise RuntimeError(f"{owner}: computes no gradient; call it under torch.no_grad() (inference)")
    check_backend(owner, backend)
    chosen = resolve_backend(backend, source.device, KERNELS)
    weight = weight.to(source.dtype)
    bias = None if bias is None else bias.to(source.dtype)
    return run_step(source, weight, bias, h0, output_gate, input_gate, forget_scale, chosen)


def run_step(
    source: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    h0: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    forget_scale: float,
    backend: str,
    output_shape: tuple[int, ...] | None = None,
    state_shape: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`qrnn_step` for callers that checked their arguments (the layer), on a resolved backend.

    A streaming step is so small that the checks would cost as much as the kernel: the layer has already
    made them for its input, state and weights. ``source`` and ``h0`` may have any leading dims over their B
    rows (a layer's step is ``(1, B, K)``); ``output_shape`` and ``state_shape`` (default ``(B, H)``)
    give the results the shapes the caller returns, so that it need not reshape them (a view op costs
    about as much as a tenth of the step).
    """
    rows, hidden = source.numel() // source.shape[-1], weight.shape[0] // gate_count(output_gate, input_gate)
    output_shape, state_shape = output_shape or (rows, hidden), state_shape or (rows, hidden)
    if backend == "reference":
        out, hn = qrnn_step_reference(
            source.reshape(rows, -1),
            weight,
            bias,
            None if h0 is None else h0.reshape(rows, hidden),
            output_gate=output_gate,
            input_gate=input_gate,
            forget_scale=forget_scale,
        )
        return out.reshape(output_shape), hn.reshape(state_shape)
    return kernel_module(__name__, backend).step(
        source,
        weight,
        bias,
        h0,
        output_gate,
        input_gate,
        forget_scale,
        output_shape,
        state_shape,
    )


# Where a module keeps its step plan (numpy views of its weights): in its ``__dict__``, never pickled.
PLAN_ATTRIBUTE = "_cached_plan"


def without_plan(state: dict[str, Any]) -> dict[str, Any]:
    """A module's pickled state without its step plan (:func:`cached_plan` makes it again on the first
    step): what ``QRNNLayer`` and ``QRNN`` return from ``__getstate__``."""
    state.pop(PLAN_ATTRIBUTE, None)
    return state


def cached_plan(
    owner: torch.nn.Module,
    parameters: list[tuple[Tensor, Tensor | None]],
    options: list[tuple[int, bool, bool, bool]],
    scales: list[float],
) -> Any:
    """The plan of a batch-1 step of a stack (``cpu.StackPlan``: ``plan.run(...)`` steps it in one kernel
    call) whose checked, plain projections are ``parameters`` (``(weight, bias)`` per layer), with
    ``options`` ``(window, backward, output_gate, input_gate)`` and forget ``scales`` per layer; kept on
    ``owner`` while its weights' storage and the options stay. None where the step cannot run here: no BLAS
    routine for the weights' dtype reachable from the kernel (float32/64: torch's; bfloat16: MKL's), or
    deterministic algorithms asked for (then the generic path's ``F.linear`` gives the same bits)."""
    if torch.are_deterministic_algorithms_enabled():
        return None
    plan = owner.__dict__.get(PLAN_ATTRIBUTE)
    if plan is not None and plan.holds(parameters, options, scales):
        return plan
    kernels = kernel_module(__name__, "cpu")
    if not kernels.stack_available(parameters[0][0].dtype):
        return None
    plan = owner.__dict__[PLAN_ATTRIBUTE] = kernels.StackPlan(parameters, options, scales)
    return plan


def fused_step_kernels() -> Any:
    """The CPU step kernels' module (``qrnn_step/cpu.py``), loaded on first use (numba compiles it):
    ``stack_available(dtype)``, ``StackPlan`` and ``step_stack``, for :class:`torchqrnn.Stepper`."""
    return kernel_module(__name__, "cpu")


def pool_step(
    gates: Tensor, h0: Tensor | None, output_gate: bool, input_gate: bool, forget_scale: float
) -> tuple[Tensor, Tensor]:
    """The pooling of one time step from its checked pre-activation ``gates`` (``(1, B, G*H)`` or
    ``(B, 1, G*H)``, of a dtype the kernels take, on CPU) and state ``h0`` ``(B, H)`` or None, by the step's
    gates kernel (the pooling kernel's arithmetic, term for term), for callers that decided no autograd is
    needed. Returns ``(output like gates with H features, h_n (B, H))``."""
    return kernel_module(__name__, "cpu").pool_step(gates, h0, output_gate, input_gate, forget_scale)
