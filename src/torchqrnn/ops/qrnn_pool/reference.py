"""The QRNN layer's element-wise part written plainly: gates, zoneout, the recurrence, the output gate.

This is the definition the fused kernels are tested against: activations from ``torch``, one Python step per
time step, PyTorch autograd for the gradients, half types upcast to float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def qrnn_pool_reference(
    gates: Tensor,
    h0: Tensor | None,
    *,
    output_gate: bool,
    input_gate: bool,
    forget_mask: Tensor | None,
    forget_scale: float,
    lengths: Tensor | None,
    batch_first: bool,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """``(output, last cell state)`` from pre-activation ``gates`` (see :func:`torchqrnn.ops.qrnn_pool`)."""
    if batch_first:
        gates = gates.transpose(0, 1)
        forget_mask = None if forget_mask is None else forget_mask.transpose(0, 1)
    steps, batch, width = gates.shape
    hidden = width // (2 + output_gate + input_gate)
    y = gates.to(torch.promote_types(gates.dtype, torch.float32))
    z = torch.tanh(y[..., :hidden])
    f = torch.sigmoid(y[..., hidden : 2 * hidden]) * forget_scale
    if forget_mask is not None:
        f = f * forget_mask
    o = torch.sigmoid(y[..., 2 * hidden : 3 * hidden]) if output_gate else None
    i = torch.sigmoid(y[..., width - hidden :]) if input_gate else f

    valid = None
    if lengths is not None:
        valid = (torch.arange(steps, device=gates.device)[:, None] < lengths.to(gates.device)[None, :])[
            ..., None
        ]

    c = y.new_zeros(batch, hidden) if h0 is None else h0.to(y.dtype)
    cells: list[Tensor] = [c] * steps
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        stepped = i[t] * z[t] + (1 - f[t]) * c
        c = stepped if valid is None else torch.where(valid[t], stepped, c)  # padding carries the state
        cells[t] = c
    cell_states = torch.stack(cells) if steps else y.new_zeros(0, batch, hidden)
    output = cell_states if o is None else o * cell_states
    if valid is not None:
        output = output * valid  # padding outputs are zero, so the next layer's window reads zeros there
    output = output.to(gates.dtype)
    return (output.transpose(0, 1) if batch_first else output), c.to(gates.dtype)
