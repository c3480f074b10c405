"""A QRNN written straight from the equations: slow, obvious, and independent of the library's code paths.

It reads only a layer's weights and options, builds each time step's window by hand, and loops over time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchqrnn import QRNN, QRNNLayer


def reference_layer(
    layer: QRNNLayer,
    x: Tensor,
    h0: Tensor | None = None,
    context: Tensor | None = None,
    forget_mask: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer on time-major ``x`` (T, B, I): ``(output (T, B, H), last cell state (B, H), next context)``.

    ``forget_mask`` (T, B, H) stands in for zoneout's training mask; without it, a zoneout layer in
    evaluation mode scales ``f`` by ``1 - zoneout``. ``weight`` and ``bias`` stand in for the projection's
    (the effective weight of a wrapped or reparametrized ``layer.linear``); by default its own. ``project``
    stands in for the whole product ``W source + b`` of each step (a quantized projection's).
    """
    steps, batch, size = x.shape
    hidden, window = layer.hidden_size, layer.window
    if weight is None:
        weight, bias = layer.linear.weight, layer.linear.bias
    zeros = x.new_zeros(batch, size)

    def x_at(t: int) -> Tensor:
        if 0 <= t < steps:
            return x[t]
        if context is not None and t < 0:
            return context[window - 1 + t]  # the context ends with x_{-1}
        if context is not None and t >= steps:
            return context[t - steps]  # backward: the context starts with x_T
        return zeros

    step = 1 if layer.backward else -1
    c = x.new_zeros(batch, hidden) if h0 is None else h0
    outputs: list[Tensor] = [zeros] * steps
    for t in range(steps - 1, -1, -1) if layer.backward else range(steps):
        source = torch.cat([x_at(t + step * k) for k in range(window)], dim=1)  # (B, window * I)
        y = project(source) if project is not None else source @ weight.T + (0 if bias is None else bias)
        blocks = y.split(hidden, dim=1)
        z, f = torch.tanh(blocks[0]), torch.sigmoid(blocks[1])
        o = torch.sigmoid(blocks[2]) if layer.output_gate else None
        if forget_mask is not None:
            f = f * forget_mask[t]
        elif layer.zoneout and not layer.training:
            f = f * (1 - layer.zoneout)
        i = torch.sigmoid(blocks[-1]) if layer.input_gate else f
        c = i * z + (1 - f) * c
        outputs[t] = c if o is None else o * c

    edge = x.new_zeros(window - 1, batch, size) if context is None else context
    if layer.backward:
        next_context = torch.cat([x, edge])[: window - 1]
    else:
        next_context = torch.cat([edge, x])[steps:]
    return torch.stack(outputs), c, next_context


def reference_qrnn(qrnn: QRNN, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A stack on time-major ``x`` in evaluation mode (no dropout): ``(output, h_n)``."""
    directions = 2 if qrnn.bidirectional else 1
    finals = []
    for depth in range(qrnn.num_layers):
        layers = [qrnn.layers[depth]] + ([qrnn.layers_bwd[depth]] if qrnn.bidirectional else [])
        outputs = []
        for direction, layer in enumerate(layers):
            state = None if h0 is None else h0[depth * directions + direction]
            out, c, _ = reference_layer(layer, x, state)
            outputs.append(out)
            finals.append(c)
        x = torch.cat(outputs, dim=2)
    return x, torch.stack(finals)
