"""The plain ForgetMult loop: the definition every kernel is tested against.

Deliberately simple: one Python step per time step, PyTorch autograd for the gradients, half types upcast
to float32 for the whole loop. It runs on any device and is the ``backend="reference"`` path.
"""

from __future__ import annotations

import torch
from torch import Tensor


def forget_mult_reference(
    f: Tensor, x: Tensor, h0: Tensor | None, *, batch_first: bool, reverse: bool
) -> Tensor:
    """``h_t = f_t * x_t + (1 - f_t) * h_{t-1}`` over 3-D ``f``, ``x``; ``h0`` is ``(B, H)`` or ``None``.

    ``reverse`` walks time from the last step to the first, ``h0`` then standing just after the end.
    """
    time_dim = 1 if batch_first else 0
    steps = x.shape[time_dim]
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    h = (
        h0.to(compute_dtype)
        if h0 is not None
        else x.new_zeros(x.shape[:time_dim] + x.shape[time_dim + 1 :], dtype=compute_dtype)
    )
    if steps == 0:
        return torch.empty_like(x)
    # unbind, not select: select's backward writes a full-size zero tensor per step (quadratic in T).
    f_steps = f.to(compute_dtype).unbind(time_dim)
    x_steps = x.to(compute_dtype).unbind(time_dim)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    outputs: list[Tensor] = [h] * steps
    for t in order:
        h = f_steps[t] * x_steps[t] + (1 - f_steps[t]) * h
        outputs[t] = h
    return torch.stack(outputs, dim=time_dim).to(x.dtype)
