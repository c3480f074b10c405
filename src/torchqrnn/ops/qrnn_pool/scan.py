"""QRNN pooling written with torch's ``scan`` higher-order op: its decomposition for ``torch.onnx.export``.

As :mod:`torchqrnn.ops.forget_mult.scan`: the gates' activations, zoneout and the output gate are
element-wise ops over the whole sequence; the recurrence ``c_t = a_t + b_t * c_{t-1}`` with ``a = i * z``,
``b = 1 - f`` is one ``scan``, which torch.onnx translates to one ONNX ``Scan``. Padding steps (``lengths``)
get ``a = 0``, ``b = 1``, so they carry the state unchanged, and output zeros. Registered as the op's
decomposition, with its fake implementation as its meta function (see the ForgetMult module for why).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._decomposition import register_decomposition
from .._dispatch import time_major
from ..forget_mult.scan import compute_dtype, linear_recurrence
from . import _qrnn_pool_fake, gate_count  # the dispatcher imports this module last, once the op is defined

__all__ = ["qrnn_pool_scan"]


def qrnn_pool_scan(
    gates: Tensor,
    h0: Tensor | None,
    forget_mask: Tensor | None,
    forget_scale: float,
    lengths: Tensor | None,
    output_gate: bool,
    input_gate: bool,
    batch_first: bool,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``torchqrnn::qrnn_pool`` as element-wise ops and one ``scan``: ``(output, c_n, cells)``, ``cells``
    the empty tensor without an output gate, as the op returns it. ``backend`` is ignored."""
    dtype = compute_dtype(gates.dtype)
    y = time_major(gates, batch_first).to(dtype)  # (T, B, G * H)
    blocks = y.chunk(gate_count(output_gate, input_gate), dim=-1)  # [Z; F; O; I], each (T, B, H)
    z = torch.tanh(blocks[0])
    f = torch.sigmoid(blocks[1]) * forget_scale
    if forget_mask is not None:
        f = f * time_major(forget_mask, batch_first).to(dtype)
    i = torch.sigmoid(blocks[-1]) if input_gate else f
    a, b = i * z, 1 - f
    valid = None
    if lengths is not None:
        steps = torch.arange(y.shape[0], device=y.device)
        valid = (steps[:, None] < lengths.to(y.device)[None, :])[..., None]  # (T, B, 1): a real step
        a, b = torch.where(valid, a, 0.0), torch.where(valid, b, 1.0)
    cells, c_n = linear_recurrence(a, b, None if h0 is None else h0.to(dtype), reverse)
    output = torch.sigmoid(blocks[2]) * cells if output_gate else cells
    if valid is not None:
        output = output * valid
    output = time_major(output.to(gates.dtype), batch_first).contiguous()
    if output_gate:
        saved = time_major(cells.to(gates.dtype), batch_first).contiguous()
    else:
        saved = gates.new_empty((0,))
    return output, c_n.to(gates.dtype), saved


register_decomposition(torch.ops.torchqrnn.qrnn_pool.default, qrnn_pool_scan, _qrnn_pool_fake)
