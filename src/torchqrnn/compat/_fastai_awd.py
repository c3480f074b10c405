"""fastai's ``AWD_QRNN`` for current fastai (2.8), which dropped it with its QRNN in 2.4.

Importing this module imports fastai and registers ``AWD_QRNN`` in fastai's ``_model_meta`` (the table
``language_model_learner``, ``text_classifier_learner``, ``get_language_model`` and ``get_text_classifier``
look an architecture up in), with the entries fastai 2.3.1 gave it: AWD_LSTM's splitters, the QRNN configs
below, and no pretrained weights. Users reach it through :mod:`torchqrnn.compat.fastai`
(``from torchqrnn.compat.fastai import AWD_QRNN``), whose ``__getattr__`` imports this module on first use;
``AWD_QRNN.__module__`` is that public module, so pickles (``learn.export``) name it there.
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.text.models.awdlstm import AWD_LSTM, WeightDropout, awd_lstm_clas_split, awd_lstm_lm_split
from fastai.text.models.core import _model_meta
from torch import Tensor, nn

from .fastai import QRNN

__all__ = ["AWD_QRNN", "awd_qrnn_clas_config", "awd_qrnn_lm_config"]


class AWD_QRNN(AWD_LSTM):
    """fastai's AWD-LSTM with a one-layer :class:`torchqrnn.compat.fastai.QRNN` in place of each LSTM, as
    fastai 2.3.1's ``AWD_QRNN``: window 2 for the first layer and 1 above, the window context saved between
    calls (``save_prev_x``) unless bidirectional, fo-pooling, no zoneout, and fastai's ``WeightDropout`` on
    the projection weight of each layer's forward direction. Each layer's hidden state is one tensor
    ``(n_dir, bs, n_hid)`` (an LSTM's is a pair)."""

    def _one_rnn(self, n_in: int, n_out: int, bidir: bool, weight_p: float, l: int) -> nn.Module:  # noqa: E741
        qrnn = QRNN(n_in, n_out, 1, bidirectional=bidir, save_prev_x=not bidir, window=2 if l == 0 else 1)
        qrnn.layers[0].linear = WeightDropout(qrnn.layers[0].linear, weight_p, layer_names="weight")
        return qrnn

    def _state_size(self, l: int) -> int:  # noqa: E741
        return (self.n_hid if l != self.n_layers - 1 else self.emb_sz) // self.n_dir

    def _one_hidden(self, l: int) -> Tensor:  # noqa: E741
        return next(self.parameters()).new_zeros(self.n_dir, self.bs, self._state_size(l))

    def _change_one_hidden(self, l: int, bs: int) -> Tensor:  # noqa: E741
        """Layer ``l``'s state for a batch of ``bs``: the first rows kept, zero rows added."""
        state = self.hidden[l]
        if bs < self.bs:
            return state[:, :bs]
        if bs > self.bs:
            return torch.cat([state, state.new_zeros(self.n_dir, bs - self.bs, self._state_size(l))], 1)
        return state


AWD_QRNN.__module__ = "torchqrnn.compat.fastai"  # its public home, for pickles and reprs

# fastai 2.3.1's AWD-QRNN configurations: four layers of 1552 (three LSTMs of 1152 in AWD_LSTM's)
awd_qrnn_lm_config: dict[str, Any] = dict(
    emb_sz=400, n_hid=1552, n_layers=4, pad_token=1, bidir=False, output_p=0.1, hidden_p=0.15, input_p=0.25,
    embed_p=0.02, weight_p=0.2, tie_weights=True, out_bias=True,
)  # fmt: skip
awd_qrnn_clas_config: dict[str, Any] = dict(
    emb_sz=400, n_hid=1552, n_layers=4, pad_token=1, bidir=False, output_p=0.4, hidden_p=0.3, input_p=0.4,
    embed_p=0.05, weight_p=0.5,
)  # fmt: skip

_model_meta[AWD_QRNN] = {
    "hid_name": "emb_sz",
    "config_lm": awd_qrnn_lm_config,
    "split_lm": awd_lstm_lm_split,
    "config_clas": awd_qrnn_clas_config,
    "split_clas": awd_lstm_clas_split,
}
