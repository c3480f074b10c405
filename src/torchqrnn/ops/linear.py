"""The layer's projection at the best GEMMs the platform offers, with ``F.linear`` as the exact fallback.

On CPU PyTorch runs ``F.linear`` and its backward through MKL, while ``nn.LSTM`` itself calls oneDNN. Neither
library wins everywhere: on this project's AMD EPYC (Zen 4) machine oneDNN ran the forward product
``Y = X W^T`` and the input gradient ``dX = dY W`` about 1.3x faster than MKL, and MKL the weight gradient
``dW = dY^T X`` up to 1.8x faster (measured on layer-sized products, 2 threads). So the first CPU projection
times both libraries once for each of the three products on a layer-like shape and keeps the faster of each;
:class:`_Projection` then runs a layer's forward and backward with those choices.
``TORCHQRNN_CPU_GEMM=onednn|linear`` (or :func:`set_cpu_gemm`) forces one library for all three.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ._dispatch import resolve_backend

_CHOICES = ("auto", "onednn", "linear")
_PRODUCTS = ("forward", "input_grad", "weight_grad")
# oneDNN reorders a plain weight into its blocked layout on every call: below this many rows (T * B) that
# costs more than the product saves (measured: 8 ms against MKL's 0.05 ms for one 320-unit step).
ONEDNN_MIN_ROWS = 256
_lock = threading.Lock()
_setting: str | None = None  # set_cpu_gemm's choice; None: the environment's, else "auto"
_probed: dict[str, str] | None = None  # the probe's verdict per product, once made


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(a: Tensor, b_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b_t.T + bias`` through oneDNN (``b_t`` in ``F.linear``'s weight layout)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


# The three products by library: forward Y = X W^T + b, input gradient dX = dY W, weight gradient dW = dY^T X,
# each on 2-D operands (rows = T * B).
_FORWARD: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "onednn": _onednn,
    "linear": F.linear,
}
_INPUT_GRAD: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "onednn": lambda grad, weight: _onednn(grad, weight.t()),
    "linear": torch.mm,
}
_WEIGHT_GRAD: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "onednn": lambda grad, input: _onednn(grad.t(), input.t()),
    "linear": lambda grad, input: torch.mm(grad.t(), input),
}


class _Projection(torch.autograd.Function):
    """``F.linear`` with each of its three products computed by the library chosen for it."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None, choice: dict[str, str]
    ) -> Tensor:
        ctx.save_for_backward(input, weight)
        ctx.has_bias, ctx.choice = bias is not None, choice
        rows = input.reshape(-1, input.shape[-1])
        return _FORWARD[choice["forward"]](rows, weight, bias).view(*input.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        input_rows = input.reshape(-1, input.shape[-1])  # (rows, in)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _INPUT_GRAD[ctx.choice["input_grad"]](grad_rows, weight).view(input.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = _WEIGHT_GRAD[ctx.choice["weight_grad"]](grad_rows, input_rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_input, grad_weight, grad_bias, None


def set_cpu_gemm(choice: str) -> None:
    """``"onednn"`` or ``"linear"`` (MKL through ``F.linear``) for every CPU product, or ``"auto"``."""
    global _setting
    if choice not in _CHOICES:
        raise ValueError(f"set_cpu_gemm: expected one of {_CHOICES}, got {choice!r}")
    _setting = choice


def _probe() -> dict[str, str]:
    """Time MKL and oneDNN side by side on each product of a layer-like shape; the faster of each.

    1024 rows x 512 inputs x 1536 outputs: about 0.2 s in all, once per process.
    """
    x, weight, bias = torch.randn(1024, 512), torch.randn(1536, 512), torch.randn(1536)
    grad = torch.randn(1024, 1536)
    runs = {
        "forward": {lib: (lambda f=f: f(x, weight, bias)) for lib, f in _FORWARD.items()},
        "input_grad": {lib: (lambda f=f: f(grad, weight)) for lib, f in _INPUT_GRAD.items()},
        "weight_grad": {lib: (lambda f=f: f(grad, x)) for lib, f in _WEIGHT_GRAD.items()},
    }
    verdict = {}
    for product, candidates in runs.items():
        seconds: dict[str, list[float]] = {lib: [] for lib in candidates}
        for _ in range(3):
            for lib, run in candidates.items():
                start = time.perf_counter()
                run()
                seconds[lib].append(time.perf_counter() - start)
        # oneDNN only when clearly faster: the medians' ratio must beat the noise of a shared machine
        faster = statistics.median(seconds["onednn"]) < 0.9 * statistics.median(seconds["linear"])
        verdict[product] = "onednn" if faster else "linear"
    return verdict


def cpu_gemm() -> dict[str, str]:
    """The library of each CPU product: the setting, else ``TORCHQRNN_CPU_GEMM``, else the probe's."""
    global _probed
    choice = _setting or os.environ.get("TORCHQRNN_CPU_GEMM", "auto")
    if choice not in _CHOICES:
        raise ValueError(f"TORCHQRNN_CPU_GEMM: expected one of {_CHOICES}, got {choice!r}")
    if not _onednn_available():
        choice = "linear"
    if choice != "auto":
        return dict.fromkeys(_PRODUCTS, choice)
    with _lock:
        if _probed is None:
            with torch.no_grad():
                _probed = _probe()
        return _probed


def linear(input: Tensor, weight: Tensor, bias: Tensor | None, backend: str = "auto") -> Tensor:
    """``F.linear(input, weight, bias)``, its products through oneDNN on CPU where that is faster.

    ``F.linear`` itself runs under autocast (which casts for it), while tracing (so the compiler sees the
    plain op), for dtypes other than float32, for small products, on non-CPU backends, and wherever MKL won
    all three products.
    """
    if (
        input.numel() >= ONEDNN_MIN_ROWS * input.shape[-1]
        and input.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(input.device.type)
        and resolve_backend(backend, input.device) == "cpu"
    ):
        choice = cpu_gemm()
        if "onednn" in choice.values():
            return _Projection.apply(input, weight, bias, choice)
    return F.linear(input, weight, bias)
