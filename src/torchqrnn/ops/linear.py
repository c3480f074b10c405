"""The layer's projection at the best GEMMs the platform offers, with ``F.linear`` as the exact fallback.

On CPU PyTorch runs ``F.linear`` and its backward through MKL (float32) or its own oneDNN calls (bfloat16),
while ``nn.LSTM`` itself calls oneDNN's matmul primitive. Neither path wins everywhere: on this project's AMD
EPYC (Zen 4) machine oneDNN ran the float32 forward product ``Y = X W^T`` and the input gradient ``dX = dY W``
about 1.3x faster than MKL, and MKL the weight gradient ``dW = dY^T X`` up to 1.8x faster (layer-sized
products, 2 threads). So the first CPU projection of each dtype (float32, and bfloat16 where oneDNN has
bfloat16 kernels) times both paths once for each of the three products on a layer-like shape and keeps the
faster of each; :class:`_Projection` then runs a layer's forward and backward with those choices. Under
``torch.autocast("cpu", dtype=torch.bfloat16)`` the projection casts its operands to bfloat16 (as autocast
would for ``F.linear``) and takes the bfloat16 choices.

The choice is reproducible where asked: ``TORCHQRNN_CPU_GEMM=onednn|linear`` (or :func:`set_cpu_gemm`)
forces one path for all products, and under ``torch.use_deterministic_algorithms(True)`` an unset choice is
``linear`` (``F.linear``, PyTorch's own path), made without timing, so that two processes compute the same
bits. The probe draws its operands from a private generator: it never moves the global random stream.
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

from . import thresholds
from ._dispatch import resolve_backend

_CHOICES = ("auto", "onednn", "linear")
_PRODUCTS = ("forward", "input_grad", "weight_grad")
# oneDNN reorders a plain weight into its blocked layout on every call: below this many rows (T * B) that
# costs more than the product saves (measured: 8 ms against MKL's 0.05 ms for one 320-unit step).
ONEDNN_MIN_ROWS = thresholds.ONEDNN_MIN_ROWS
# The dtypes the probe decides for; others (float64, float16: no oneDNN speed-up here) take F.linear.
PROBED_DTYPES = (torch.float32, torch.bfloat16)
_lock = threading.Lock()
_setting: str | None = None  # set_cpu_gemm's choice; None: the environment's, else "auto"
_probed: dict[torch.dtype, dict[str, str]] = {}  # the probe's verdict per dtype and product, once made


def _onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


# The products a backward that builds a graph takes (see _Projection).
_DIFFERENTIABLE = dict.fromkeys(_PRODUCTS, "linear")


class _Projection(torch.autograd.Function):
    """``F.linear`` with each of its three products computed by the library chosen for it.

    Twice differentiable: a backward that builds a graph (``create_graph=True``: gradient penalties,
    Hessian-vector products) computes its products with PyTorch's differentiable ``mm`` on the saved
    tensors, so the gradients it returns are themselves differentiable (oneDNN's primitive has no
    derivative); a plain backward takes the chosen libraries.
    """

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None, choice: dict[str, str]
    ) -> Tensor:
        ctx.save_for_backward(input, weight)
        ctx.has_bias, ctx.choice = bias is not None, choice
        rows = input.reshape(-1, input.shape[-1])
        return _FORWARD[choice["forward"]](rows, weight, bias).view(*input.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        input_rows = input.reshape(-1, input.shape[-1])  # (rows, in)
        # building a graph: the "linear" products (torch.mm) are differentiable, oneDNN's are not
        choice = _DIFFERENTIABLE if torch.is_grad_enabled() else ctx.choice
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _INPUT_GRAD[choice["input_grad"]](grad_rows, weight).view(input.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = _WEIGHT_GRAD[choice["weight_grad"]](grad_rows, input_rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_input, grad_weight, grad_bias, None


def set_cpu_gemm(choice: str) -> None:
    """``"onednn"`` or ``"linear"`` (MKL through ``F.linear``) for every CPU product, or ``"auto"``."""
    global _setting
    if choice not in _CHOICES:
        raise ValueError(f"set_cpu_gemm: expected one of {_CHOICES}, got {choice!r}")
    _setting = choice


def _probe(dtype: torch.dtype) -> dict[str, str]:
    """Time F.linear's path and oneDNN side by side on each product of a layer-like shape, in ``dtype``; the
    faster of each.

    1024 rows x 512 inputs x 1536 outputs: about 0.2 s in all, once per process and dtype. The operands come
    from a private generator, so the user's random stream is untouched.
    """
    generator = torch.Generator().manual_seed(0)
    x, weight, bias, grad = (
        torch.randn(shape, generator=generator).to(dtype)
        for shape in ((1024, 512), (1536, 512), 1536, (1024, 1536))
    )
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


def cpu_gemm(dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """The library of each CPU product in ``dtype``: the setting, else ``TORCHQRNN_CPU_GEMM``, else
    ``linear`` under ``torch.use_deterministic_algorithms(True)``, else the probe's verdict."""
    choice = _setting or os.environ.get("TORCHQRNN_CPU_GEMM", "auto")
    if choice not in _CHOICES:
        raise ValueError(f"TORCHQRNN_CPU_GEMM: expected one of {_CHOICES}, got {choice!r}")
    if dtype not in PROBED_DTYPES or not _onednn_available(dtype):
        choice = "linear"
    elif choice == "auto" and torch.are_deterministic_algorithms_enabled():
        choice = "linear"  # timing could choose differently in another process
    if choice != "auto":
        return dict.fromkeys(_PRODUCTS, choice)
    verdict = _probed.get(dtype)
    if verdict is None:
        with _lock:
            verdict = _probed.get(dtype)
            if verdict is None:
                with torch.no_grad():
                    verdict = _probed[dtype] = _probe(dtype)
    return verdict


def linear(input: Tensor, weight: Tensor, bias: Tensor | None, backend: str = "auto") -> Tensor:
    """``F.linear(input, weight, bias)``, its products through oneDNN on CPU where that is faster.

    Under CPU autocast to bfloat16 the operands are cast as autocast would cast them for ``F.linear`` and the
    bfloat16 choices apply. ``F.linear`` itself runs while tracing (so the compiler sees the plain op), for
    dtypes the probe does not decide, for small products, on non-CPU backends, and wherever ``F.linear``'s
    path won all three products.
    """
    if input.numel() < ONEDNN_MIN_ROWS * input.shape[-1] or torch.compiler.is_compiling():
        return F.linear(input, weight, bias)
    dtype = input.dtype
    autocast = torch.is_autocast_enabled(input.device.type)
    if autocast:
        dtype = torch.get_autocast_dtype(input.device.type)
        if input.dtype != torch.float32 and input.dtype != dtype:  # autocast leaves float64 alone
            return F.linear(input, weight, bias)
    if (
        dtype in PROBED_DTYPES
        and weight.dtype in (dtype, torch.float32 if autocast else dtype)
        and resolve_backend(backend, input.device) == "cpu"
    ):
        choice = cpu_gemm(dtype)
        if "onednn" in choice.values():
            if not autocast:
                return _Projection.apply(input, weight, bias, choice)
            with torch.autocast(input.device.type, enabled=False):
                cast = [None if t is None else t.to(dtype) for t in (input, weight, bias)]
                return _Projection.apply(*cast, choice)
    return F.linear(input, weight, bias)
