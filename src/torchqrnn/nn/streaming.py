"""``StreamingQRNN``: a QRNN's step function for deployment, every piece of state a tensor in and out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layer import QRNNLayer
from .qrnn import QRNN
from .stepper import Stepper


class StreamingQRNN(nn.Module):
    r"""Run a unidirectional :class:`QRNN` one chunk (or one step) at a time, all state carried explicitly.

    ``forward(input, h0, *contexts) -> (output, h_n, *next_contexts)``: the chunk, the cell states and one
    window context per layer go in; the chunk's output, the new cell states and the new contexts come out.
    Feeding each call's states to the next gives the outputs of the whole sequence to rounding: a chunk's
    projection sums its terms in another order than the whole sequence's (a few ulps of each gate), and the
    pooling, a contraction, carries no more than that. Nothing is
    stored on the module and every argument is a tensor, so the signature stays fixed: export it with
    :func:`torchqrnn.export.export_program` or :func:`torchqrnn.export.to_onnx` and drive the exported
    graph step by step (context in, context out). :meth:`initial_state` gives the zeros to start from.

    It shares the wrapped QRNN's parameters and starts in its mode (built on :meth:`QRNN.forward_stream`);
    use ``.eval()`` for inference. A bidirectional QRNN cannot stream: its reverse direction starts at each
    sequence's end.

    Shapes (``L`` = ``num_layers``, ``B`` batch, ``w_l`` = layer ``l``'s window, ``I_l`` its input size):
        - input: ``(T, B, input_size)``, or ``(B, T, input_size)`` if the QRNN is ``batch_first``.
        - h0, h_n: ``(L, B, hidden_size)``, the cell states.
        - contexts: ``(w_l - 1, B, I_l)`` per layer, time-major whatever ``batch_first``: the last
          ``w_l - 1`` inputs of the layer so far. A window-1 layer's is the empty ``(0, B, I_l)``.
    """

    def __init__(self, qrnn: QRNN) -> None:
        super().__init__()
        if not isinstance(qrnn, QRNN):
            raise TypeError(f"StreamingQRNN: expected a torchqrnn.QRNN, got {type(qrnn).__name__}")
        if qrnn.bidirectional:
            raise ValueError(
                "StreamingQRNN: expected a unidirectional QRNN, got bidirectional=True; the reverse "
                "direction starts at each sequence's end, so it needs the whole sequence and cannot run "
                "chunk by chunk"
            )
        self.qrnn = qrnn
        self.train(qrnn.training)  # wrap an evaluation-mode QRNN, get an evaluation-mode streamer

    def context_shapes(self, batch_size: int) -> list[tuple[int, int, int]]:
        """Each layer's context shape ``(window - 1, batch_size, layer input size)``."""
        layers: list[QRNNLayer] = list(self.qrnn.layers)  # type: ignore[arg-type]
        return [(layer.window - 1, batch_size, layer.input_size) for layer in layers]

    def initial_state(self, batch_size: int) -> tuple[Tensor, ...]:
        """``(h0, *contexts)`` of zeros, the state before a sequence's first step, on the QRNN's device and
        dtype: what a sequence starting from scratch sees (zeros before it, zero cell states)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"StreamingQRNN: expected batch_size to be an integer >= 1, got {batch_size!r}")
        # the projections' parameters' dtype and device; a quantized projection has none: float32 on the CPU
        like = self.qrnn.layers[0]._parameter_like()  # type: ignore[operator]
        dtype, device = (torch.float32, None) if like is None else (like.dtype, like.device)
        zeros = lambda *shape: torch.zeros(shape, dtype=dtype, device=device)
        h0 = zeros(self.qrnn.num_layers, batch_size, self.qrnn.hidden_size)
        return (h0, *(zeros(*shape) for shape in self.context_shapes(batch_size)))

    def stepper(self, batch_size: int = 1) -> Stepper:
        """A :class:`~torchqrnn.Stepper` of the wrapped QRNN: the same steps with the state kept inside
        instead of passed in and out, for online inference in Python (one kernel call a step at batch 1 on
        the CPU). Its :attr:`~torchqrnn.Stepper.state` is laid out as :meth:`initial_state`."""
        return Stepper(self.qrnn, batch_size)

    def forward(self, input: Tensor, h0: Tensor, *contexts: Tensor) -> tuple[Tensor, ...]:
        if len(contexts) != self.qrnn.num_layers:
            raise ValueError(
                f"StreamingQRNN: expected h0 and {self.qrnn.num_layers} contexts (one per layer, empty for "
                f"window-1 layers) after the input, got h0 and {len(contexts)}; initial_state(batch_size) "
                "gives the zeros to start from"
            )
        output, h_n, next_contexts = self.qrnn.forward_stream(input, h0, contexts)
        return (output, h_n, *next_contexts)
