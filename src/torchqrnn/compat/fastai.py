"""fastai's QRNN API (``fastai.text.models.qrnn``, fastai 2.3.1) on top of torchqrnn's classes.

Same signatures and defaults (``batch_first=True``, ``n_layers``, ``window=None`` meaning 2 for the first
layer and 1 above), same state-dict keys, same return shapes. Where torchqrnn deliberately differs, so does
this module:

- zoneout follows salesforce: a Bernoulli(1 - p) mask on ``f`` without rescaling in training, ``f * (1 - p)``
  in evaluation (fastai rescaled the mask by ``1 / (1 - p)`` and did nothing in evaluation);
- ``bidirectional`` is ``nn.GRU``'s: layer ``l + 1`` reads both directions of layer ``l`` (fastai ran two
  independent towers), so fastai's bidirectional checkpoints of more than one layer do not load;
- ``dropout`` between layers is applied (fastai's was a no-op);
- a batch-size change with a saved ``prevX`` raises instead of padding or truncating it silently;
- any ``window`` >= 1 works (fastai allowed 1 or 2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.layer import QRNNLayer as _QRNNLayer
from ..nn.layer import StackCall
from ..nn.qrnn import QRNN as _QRNN
from ..ops.forget_mult import forget_mult

__all__ = ["QRNN", "QRNNLayer", "forget_mult_CPU"]


def forget_mult_CPU(
    x: Tensor, f: Tensor, first_h: Tensor | None = None, batch_first: bool = True, backward: bool = False
) -> Tensor:
    """fastai's ForgetMult: note the argument order ``(x, f)``, the reverse of salesforce's ``(f, x)``."""
    return forget_mult(f, x, first_h, batch_first=batch_first, reverse=backward)


class QRNNLayer(_QRNNLayer):
    """fastai's ``QRNNLayer``: ``batch_first=True`` by default; returns ``(output, h_n)`` with ``h_n`` of
    shape ``(B, H)`` (the last cell state), as fastai."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        save_prev_x: bool = False,
        zoneout: float = 0,
        window: int = 1,
        output_gate: bool = True,
        batch_first: bool = True,
        backward: bool = False,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            save_prev_x=save_prev_x,
            zoneout=zoneout,
            window=window,
            output_gate=output_gate,
            batch_first=batch_first,
            backward=backward,
        )

    def forward(  # type: ignore[override]
        self, inp: Tensor, hid: Tensor | None = None, *, stack: StackCall | None = None
    ) -> tuple[Tensor, Tensor]:
        if stack is not None:  # a stack's call (see torchqrnn.QRNNLayer.forward)
            return super().forward(inp, hid, stack=stack)
        output, h_n = super().forward(inp, hid)
        return output, h_n.squeeze(0)


class QRNN(_QRNN):
    """fastai's ``QRNN``: ``n_layers``, ``batch_first=True``, ``window=None`` (2 for layer 0, 1 above)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        n_layers: int = 1,
        batch_first: bool = True,
        dropout: float = 0,
        bidirectional: bool = False,
        save_prev_x: bool = False,
        zoneout: float = 0,
        window: int | None = None,
        output_gate: bool = True,
    ) -> None:
        windows = [2 if layer == 0 else 1 for layer in range(n_layers)] if window is None else window
        super().__init__(
            input_size,
            hidden_size,
            n_layers,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            window=windows,
            save_prev_x=save_prev_x,
            zoneout=zoneout,
            output_gate=output_gate,
        )
        self.n_layers = n_layers

    def forward(self, inp: Tensor, hid: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        output, h_n = super().forward(inp, hid)
        return output, h_n  # type: ignore[return-value]  # a Tensor for Tensor input


_ = torch  # the module's public names are re-exports; torch is kept for type checkers of user code
