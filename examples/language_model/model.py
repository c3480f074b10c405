"""The AWD language model (Merity, Keskar, Socher, 2017) over a QRNN or an LSTM.

Regularisation, as awd-lstm-lm:

- embedding dropout: whole words are dropped (rows of the embedding matrix, one mask per batch);
- locked (variational) dropout: one mask per sequence, shared by every time step, on the embedded input
  (``dropouti``), between layers (``dropouth``) and on the last layer's output (``dropout``);
- weight drop (DropConnect): dropout on a weight matrix, once per forward pass: the hidden-to-hidden matrix
  ``weight_hh_l0`` of each LSTM layer, the projection ``linear.weight`` of each QRNN layer;
- tied weights: the decoder is the embedding matrix, so the last layer's hidden size is ``emsize``.

Weight drop calls each layer through :func:`torch.func.functional_call` with the dropped matrix in place of
the parameter, instead of awd-lstm-lm's deleting and re-registering of parameters: the parameter stays a
parameter (state-dict keys ``rnns.{i}.linear.weight``, ``rnns.{i}.weight_hh_l0``), and DDP, checkpoints and
``torch.compile`` see an ordinary module.

The QRNN is awd-lstm-lm's: window 2 in the first layer (it sees word pairs, "New York"), 1 above, fo-pooling,
``save_prev_x``. The window context that ``save_prev_x`` keeps inside a layer is carried here in the
recurrent state beside ``h`` (:meth:`QRNNLayer.forward_stream`), so the module never mutates itself;
starting a pass from :meth:`RNNModel.init_state` is awd-lstm-lm's ``model.reset()``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from torchqrnn import QRNNLayer

# One (Tensor, Tensor) per layer, batch in dim 1: LSTM (h, c), each (1, B, H); QRNN (c, window context),
# (1, B, H) and (window - 1, B, input_size).
State = list[tuple[Tensor, Tensor]]


class StreamingQRNNLayer(QRNNLayer):
    """A :class:`QRNNLayer` called like ``nn.LSTM``: ``forward(x, (c, context)) -> (y, (c_n, context_n))``."""

    def forward(self, input: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # type: ignore[override]
        hidden, context = state
        output, hidden, context = self.forward_stream(input, hidden, context)
        return output, (hidden, context)


def embedding_dropout(embedding: nn.Embedding, words: Tensor, p: float, training: bool) -> Tensor:
    """Look ``words`` up with a fraction ``p`` of the vocabulary zeroed, the rest scaled by 1 / (1 - p)."""
    weight = embedding.weight
    if training and p > 0:
        keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)  # (V, 1): one draw per word
        weight = weight * keep
    return F.embedding(words, weight)


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout on ``x`` of shape ``(T, B, H)`` with one mask per sequence, the same at every time step."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - p) / (1 - p)  # (1, B, H)
    return x * mask


class RNNModel(nn.Module):
    """Embedding, a stack of ``nlayers`` recurrent layers, and the tied decoder.

    Layer ``l`` reads ``emsize`` (``l = 0``) or ``nhid`` features and has ``nhid`` units, the last ``emsize``
    (tied weights), as awd-lstm-lm.
    """

    def __init__(
        self,
        rnn_type: str,
        ntoken: int,
        emsize: int,
        nhid: int,
        nlayers: int,
        dropout: float = 0.4,
        dropouth: float = 0.3,
        dropouti: float = 0.65,
        dropoute: float = 0.1,
        wdrop: float = 0.5,
    ) -> None:
        super().__init__()
        if rnn_type not in ("QRNN", "LSTM"):
            raise ValueError(f"expected rnn_type 'QRNN' or 'LSTM', got {rnn_type!r}")
        self.rnn_type = rnn_type
        self.dropout, self.dropouth, self.dropouti, self.dropoute = dropout, dropouth, dropouti, dropoute
        self.wdrop = wdrop
        self.encoder = nn.Embedding(ntoken, emsize)
        sizes = [emsize] + [nhid] * (nlayers - 1) + [emsize]  # layer l maps sizes[l] -> sizes[l + 1]
        if rnn_type == "QRNN":
            self.rnns = nn.ModuleList(
                StreamingQRNNLayer(
                    sizes[layer], sizes[layer + 1], save_prev_x=True, window=2 if layer == 0 else 1
                )
                for layer in range(nlayers)
            )
            self.dropped_weight = "linear.weight"  # the projection [Z; F; O] from the window of inputs
        else:
            self.rnns = nn.ModuleList(nn.LSTM(sizes[layer], sizes[layer + 1]) for layer in range(nlayers))
            self.dropped_weight = "weight_hh_l0"
        self.decoder = nn.Linear(emsize, ntoken)
        self.decoder.weight = self.encoder.weight  # tied (Press & Wolf 2016; Inan et al. 2016)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_state(self, batch_size: int) -> State:
        """The state at the start of a pass: zeros (the QRNN's window context too, as after ``reset()``)."""
        zeros = self.encoder.weight.new_zeros
        if self.rnn_type == "QRNN":
            return [
                (zeros(1, batch_size, rnn.hidden_size), zeros(rnn.window - 1, batch_size, rnn.input_size))
                for rnn in self.rnns
            ]
        return [
            (zeros(1, batch_size, rnn.hidden_size), zeros(1, batch_size, rnn.hidden_size))
            for rnn in self.rnns
        ]

    def forward(self, words: Tensor, state: State) -> tuple[Tensor, State, Tensor, Tensor]:
        """``words`` ``(T, B)`` -> logits ``(T, B, ntoken)``, the new state, and the last layer's output
        ``(T, B, emsize)`` before and after its dropout (for activation regularisation)."""
        x = embedding_dropout(self.encoder, words, self.dropoute, self.training)  # (T, B, emsize)
        x = locked_dropout(x, self.dropouti, self.training)
        new_state = []
        for layer, rnn in enumerate(self.rnns):
            if self.training and self.wdrop > 0:
                dropped = F.dropout(rnn.get_parameter(self.dropped_weight), self.wdrop)
                x, layer_state = functional_call(rnn, {self.dropped_weight: dropped}, (x, state[layer]))
            else:
                x, layer_state = rnn(x, state[layer])
            new_state.append(layer_state)
            if layer < len(self.rnns) - 1:
                x = locked_dropout(x, self.dropouth, self.training)
        output = locked_dropout(x, self.dropout, self.training)
        return self.decoder(output), new_state, x, output


def detach(state: State) -> State:
    """Cut the graph between BPTT segments; the values carry on."""
    return [tuple(t.detach() for t in layer) for layer in state]  # type: ignore[misc]
