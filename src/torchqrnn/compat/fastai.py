"""fastai's QRNN API (``fastai.text.models.qrnn``, fastai 2.3.1) on top of torchqrnn's classes, and
fastai's ``AWD_QRNN`` for current fastai releases (fastai removed its QRNN in 2.4).

Same signatures and defaults (``batch_first=True``, ``n_layers``, ``window=None`` meaning 2 for the first
layer and 1 above), same state-dict keys, same return shapes, and fastai's handling of the saved window
context ``prevX``:

- ``prevX`` has fastai's layout: ``(B, window - 1, input_size)`` for a batch-first layer,
  ``(window - 1, B, input_size)`` otherwise (torchqrnn's own layers keep it time-major);
- when the batch size changes under a saved ``prevX`` (fastai's ``SentenceEncoder`` drops the documents that
  have ended, without a ``reset()``), the context is cut to the first ``B`` rows, or padded with zero rows,
  as fastai 2.3.1 did; torchqrnn's own layers raise instead.

Where torchqrnn deliberately differs, so does this module:

- zoneout follows salesforce: a Bernoulli(1 - p) mask on ``f`` without rescaling in training, ``f * (1 - p)``
  in evaluation (fastai rescaled the mask by ``1 / (1 - p)`` and did nothing in evaluation);
- ``bidirectional`` is ``nn.GRU``'s: layer ``l + 1`` reads both directions of layer ``l`` (fastai ran two
  independent towers), so fastai's bidirectional checkpoints of more than one layer do not load;
- ``dropout`` between layers is applied (fastai's was a no-op);
- any ``window`` >= 1 works (fastai allowed 1 or 2).

``AWD_QRNN``, ``awd_qrnn_lm_config`` and ``awd_qrnn_clas_config`` import fastai when first asked for
(``from torchqrnn.compat.fastai import AWD_QRNN``): nothing here imports fastai before that. Asking for them
also registers ``AWD_QRNN`` in fastai's ``_model_meta``, so ``language_model_learner(dls, AWD_QRNN)`` and
``text_classifier_learner(dls, AWD_QRNN)`` work (see :mod:`torchqrnn.compat._fastai_awd`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..nn.layer import QRNNLayer as _QRNNLayer
from ..nn.layer import StackCall
from ..nn.qrnn import QRNN as _QRNN
from ..ops.forget_mult import forget_mult

# (AWD_QRNN, awd_qrnn_lm_config and awd_qrnn_clas_config import fastai on first use: see __getattr__)
__all__ = ["QRNN", "QRNNLayer", "forget_mult_CPU"]


def forget_mult_CPU(
    x: Tensor, f: Tensor, first_h: Tensor | None = None, batch_first: bool = True, backward: bool = False
) -> Tensor:
    """fastai's ForgetMult: note the argument order ``(x, f)``, the reverse of salesforce's ``(f, x)``."""
    return forget_mult(f, x, first_h, batch_first=batch_first, reverse=backward)


def _fit_context(context: Tensor, batch: int) -> Tensor:
    """A time-major window context ``(window - 1, B', I)`` fitted to ``batch`` rows as fastai 2.3.1 fitted
    its ``prevX``: the first ``batch`` rows kept, zero rows added after them where ``B' < batch``."""
    rows = context.shape[1]
    if rows > batch:
        return context[:, :batch]
    if rows < batch:
        return torch.cat([context, context.new_zeros(context.shape[0], batch - rows, context.shape[2])], 1)
    return context


def _fit_saved_context(layer: _QRNNLayer, input: object) -> None:
    """Fit ``layer``'s saved context to the batch of ``input`` (a padded 3-D tensor) before a call."""
    context = layer.prev_x
    if context is None or context.dim() != 3 or not isinstance(input, Tensor) or input.dim() != 3:
        return  # no context, or unbatched / packed input: the layer's own checks speak
    batch = input.shape[0 if layer.batch_first else 1]
    if context.shape[1] != batch:
        layer.__dict__["prev_x"] = _fit_context(context, batch)


class QRNNLayer(_QRNNLayer):
    """fastai's ``QRNNLayer``: ``batch_first=True`` by default; returns ``(output, h_n)`` with ``h_n`` of
    shape ``(B, H)`` (the last cell state), as fastai. ``prevX`` is in fastai's layout, and a batch-size
    change under it trims or zero-pads it (see the module docstring)."""

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

    @property
    def prevX(self) -> Tensor | None:
        """The saved window context in fastai's layout: ``(B, window - 1, input_size)`` batch-first,
        ``(window - 1, B, input_size)`` otherwise. Assign ``None`` to reset."""
        context = self.prev_x
        if context is None or not self.batch_first or context.dim() != 3:
            return context
        return context.transpose(0, 1)

    @prevX.setter
    def prevX(self, value: Tensor | None) -> None:
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"QRNNLayer: expected prevX to be a Tensor or None, got {type(value).__name__}")
        if value is not None and self.batch_first and value.dim() == 3:
            value = value.transpose(0, 1)
        self.prev_x = None if value is None else value.detach()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a whole-model pickle of fastai 2.3.1's ``QRNNLayer`` whose class resolves here (see
        the docs): its ``prevX`` is read in its own layout, and the sizes it did not store are read from
        its projection."""
        state = dict(state)
        prev = state.get("prevX")
        if isinstance(prev, Tensor) and state.get("batch_first", False) and prev.dim() == 3:
            state["prevX"] = prev.transpose(0, 1)  # fastai's (B, w - 1, I) -> time-major
        if "input_size" not in state:  # fastai 2.3.1 kept only the projection
            linear = state["_modules"]["linear"]
            linear = getattr(linear, "module", linear)  # (AWD_QRNN wrapped it in a WeightDropout)
            gates = 3 if state.get("output_gate", True) else 2
            state["input_size"] = linear.in_features // state.get("window", 1)
            state["hidden_size"] = linear.out_features // gates
        super().__setstate__(state)

    def forward(  # type: ignore[override]
        self, inp: Tensor, hid: Tensor | None = None, *, stack: StackCall | None = None
    ) -> tuple[Tensor, Tensor]:
        if stack is not None:  # a stack's call (see torchqrnn.QRNNLayer.forward); the stack fitted it
            return super().forward(inp, hid, stack=stack)
        _fit_saved_context(self, inp)
        output, h_n = super().forward(inp, hid)
        return output, h_n.squeeze(0)


class QRNN(_QRNN):
    """fastai's ``QRNN``: ``n_layers``, ``batch_first=True``, ``window=None`` (2 for layer 0, 1 above).

    Its layers are this module's :class:`QRNNLayer`; a batch-size change under their saved ``prevX`` trims
    or zero-pads it, as fastai 2.3.1."""

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
        for layer in self.modules():
            if type(layer) is _QRNNLayer:
                # fastai's layer class (its prevX layout), which adds methods only: built by the stack as
                # torchqrnn's, whose options the fastai signature does not take
                layer.__class__ = QRNNLayer

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, also a whole-model pickle of fastai 2.3.1's ``QRNN`` (which kept ``n_layers`` and its
        layers but not the sizes)."""
        state = dict(state)
        if "num_layers" not in state:
            layers = list(state["_modules"]["layers"])
            if state.get("bidirectional") and len(layers) > 1:
                raise RuntimeError(
                    "QRNN: cannot load fastai's bidirectional QRNN of more than one layer: it ran two "
                    "independent towers, whose layers >= 1 read one direction only; torchqrnn's, like "
                    "nn.GRU's, read both directions of the layer below"
                )
            state.update(
                num_layers=state["n_layers"],
                input_size=layers[0].input_size,
                hidden_size=layers[0].hidden_size,
                bias=True,
            )
        super().__setstate__(state)

    def forward(self, inp: Tensor, hid: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        for layer in self.layers:
            _fit_saved_context(layer, inp)  # type: ignore[arg-type]  # (every layer sees inp's batch size)
        output, h_n = super().forward(inp, hid)
        return output, h_n  # type: ignore[return-value]  # a Tensor for Tensor input


_LAZY = ("AWD_QRNN", "awd_qrnn_lm_config", "awd_qrnn_clas_config")


def __getattr__(name: str) -> Any:
    """``AWD_QRNN`` and its configs: fastai is imported (and ``AWD_QRNN`` registered in its
    ``_model_meta``) only when one of them is first asked for."""
    if name in _LAZY:
        from . import _fastai_awd

        return getattr(_fastai_awd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
