"""One inference step of a layer, written plainly: the projection, then the pooling of a single time step."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def qrnn_step_reference(
    source: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    h0: Tensor | None,
    *,
    output_gate: bool,
    input_gate: bool,
    forget_scale: float,
) -> tuple[Tensor, Tensor]:
    """``(output, cell state)``, both ``(B, H)``, from the window ``source`` ``(B, window * I)``."""
    gates = F.linear(source, weight, bias).to(torch.promote_types(source.dtype, torch.float32))
    hidden = weight.shape[0] // (2 + output_gate + input_gate)
    z = torch.tanh(gates[:, :hidden])
    f = torch.sigmoid(gates[:, hidden : 2 * hidden]) * forget_scale
    i = torch.sigmoid(gates[:, -hidden:]) if input_gate else f
    c_prev = gates.new_zeros(source.shape[0], hidden) if h0 is None else h0.to(gates.dtype)
    c = i * z + (1 - f) * c_prev
    h = torch.sigmoid(gates[:, 2 * hidden : 3 * hidden]) * c if output_gate else c
    return h.to(source.dtype), c.to(source.dtype)
