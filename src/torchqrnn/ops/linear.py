"""The layer's projection at the best GEMM the platform offers, with ``F.linear`` as the exact fallback.

On CPU PyTorch runs ``F.linear`` through MKL's sgemm, while ``nn.LSTM`` itself calls oneDNN, which on this
project's AMD EPYC (AVX-512) machine ran the same product twice as fast (354 vs 174 GFLOP/s, measured). Which
is faster depends on the CPU and the build, so the first CPU projection times both once, forward and
backward, on a layer-sized product, and keeps the faster. ``TORCHQRNN_CPU_GEMM=onednn|linear`` (or
:func:`set_cpu_gemm`) overrides the probe. oneDNN has no autograd formula here, so :class:`_OneDNNLinear`
supplies one: its backward products run through oneDNN too.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ._dispatch import resolve_backend

_CHOICES = ("auto", "onednn", "linear")
# oneDNN reorders a plain weight into its blocked layout on every call: below this many rows (T * B) that
# costs more than the product saves (measured: 8 ms against MKL's 0.05 ms for one 320-unit step).
ONEDNN_MIN_ROWS = 256
_lock = threading.Lock()
_setting: str | None = None  # set_cpu_gemm's choice; None: the environment's, else "auto"
_probed: str | None = None  # the probe's verdict, once made


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_linear(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` computed by oneDNN, forward and backward."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(input, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _onednn_linear(grad, weight.t(), None)  # dX = dY W
        rows = grad.reshape(-1, grad.shape[-1])  # (N, out)
        if ctx.needs_input_grad[1]:
            grad_weight = _onednn_linear(
                rows.t(), input.reshape(-1, input.shape[-1]).t(), None
            )  # dW = dY^T X
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_input, grad_weight, grad_bias


def set_cpu_gemm(choice: str) -> None:
    """``"onednn"`` or ``"linear"`` (``F.linear``) for CPU projections, or ``"auto"`` to probe once."""
    global _setting
    if choice not in _CHOICES:
        raise ValueError(f"set_cpu_gemm: expected one of {_CHOICES}, got {choice!r}")
    _setting = choice


def _probe() -> str:
    """Time ``F.linear`` and oneDNN forward+backward side by side on a layer-like product; the faster.

    The product is small enough that the probe costs a few tens of milliseconds, once per process.
    """
    x = torch.randn(1024, 256, requires_grad=True)
    weight = torch.randn(768, 256, requires_grad=True)
    bias = torch.randn(768, requires_grad=True)
    grad = torch.randn(1024, 768)
    candidates = {
        "linear": lambda: F.linear(x, weight, bias).backward(grad),
        "onednn": lambda: _OneDNNLinear.apply(x, weight, bias).backward(grad),
    }
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(4):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    # oneDNN only when clearly faster: the medians' ratio must beat the noise of a shared machine
    faster = statistics.median(seconds["onednn"]) < 0.9 * statistics.median(seconds["linear"])
    return "onednn" if faster else "linear"


def cpu_gemm() -> str:
    """The CPU GEMM projections use: the setting, else ``TORCHQRNN_CPU_GEMM``, else the probe's verdict."""
    global _probed
    choice = _setting or os.environ.get("TORCHQRNN_CPU_GEMM", "auto")
    if choice not in _CHOICES:
        raise ValueError(f"TORCHQRNN_CPU_GEMM: expected one of {_CHOICES}, got {choice!r}")
    if not _onednn_available():
        return "linear"
    if choice != "auto":
        return choice
    with _lock:
        if _probed is None:
            with torch.enable_grad():
                _probed = _probe()
        return _probed


def linear(input: Tensor, weight: Tensor, bias: Tensor | None, backend: str = "auto") -> Tensor:
    """``F.linear(input, weight, bias)``, through oneDNN on CPU where that is the faster GEMM.

    ``F.linear`` is used as it is under autocast (which casts for it), while tracing (so the compiler sees
    the plain op), for dtypes other than float32, for small products, and on every non-CPU backend.
    """
    if (
        input.numel() >= ONEDNN_MIN_ROWS * input.shape[-1]
        and input.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(input.device.type)
        and resolve_backend(backend, input.device) == "cpu"
        and cpu_gemm() == "onednn"
    ):
        return _OneDNNLinear.apply(input, weight, bias)
    return F.linear(input, weight, bias)
