"""Why ``torch.jit.trace`` and the TorchScript-based ONNX exporter (``dynamo=False``) cannot take a kernel.

Both record the torch ops a model runs on its example. torchqrnn's kernels run outside torch (numba,
Triton), so a trace would hold nothing of the recurrence, and a trace has no loop to run it for another
``T`` anyway. The kernel launcher raises :func:`traced_kernel_error` instead, naming the way that works.
"""

from __future__ import annotations

import torch

__all__ = ["traced_kernel_error"]


def traced_kernel_error(backend: str) -> RuntimeError:
    if torch.onnx.is_in_onnx_export():
        return RuntimeError(
            "torchqrnn: the TorchScript-based ONNX exporter, torch.onnx.export(..., dynamo=False), cannot "
            f"export torchqrnn's {backend!r} kernels: it records a trace of one example, which holds no loop "
            "over time. Export with torch.onnx.export(..., dynamo=True) (torch's default) or "
            "torchqrnn.export.to_onnx: each recurrence becomes one ONNX Scan, and the model runs any "
            "sequence length and batch size"
        )
    return RuntimeError(
        f"torchqrnn: torch.jit.trace cannot record torchqrnn's {backend!r} kernels, which run outside torch. "
        "Use torch.export (torchqrnn.export.export_program) or torch.compile, which keep the kernels, or "
        "backend='reference' to trace the reference loop, unrolled for the example's sequence length"
    )
