"""StreamingQRNN: chunks and single steps carry h and every window context, equal to the whole sequence."""

from __future__ import annotations

import pytest
import torch

from torchqrnn import QRNN, StreamingQRNN
from torchqrnn.compat import fastai

F64 = torch.float64


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("chunks", [[1] * 11, [4, 1, 6], [11]], ids=["steps", "chunks", "whole"])
def test_chunks_and_single_steps_equal_the_whole_sequence(batch_first: bool, chunks: list[int]) -> None:
    qrnn = QRNN(3, 4, num_layers=3, window=[3, 1, 2], zoneout=0.3, input_gate=True, batch_first=batch_first)
    qrnn = qrnn.to(F64).eval()
    streamer = StreamingQRNN(qrnn)
    time_dim = 1 if batch_first else 0
    x = torch.randn(2, 11, 3, dtype=F64) if batch_first else torch.randn(11, 2, 3, dtype=F64)
    h0 = torch.randn(3, 2, 4, dtype=F64)
    whole, h_whole = qrnn(x, h0)
    state = (h0, *streamer.initial_state(2)[1:])
    outputs = []
    for chunk in x.split(chunks, dim=time_dim):
        output, *state = streamer(chunk, *state)
        outputs.append(output)
    torch.testing.assert_close(torch.cat(outputs, time_dim), whole)
    torch.testing.assert_close(state[0], h_whole)
    # contexts are time-major whatever the layout: each layer's last window - 1 inputs
    torch.testing.assert_close(state[1], x.narrow(time_dim, 9, 2).transpose(0, 1) if batch_first else x[9:])
    assert state[2].shape == (0, 2, 4) and state[3].shape == (1, 2, 4)


def test_initial_state_and_context_shapes() -> None:
    qrnn = QRNN(3, 5, num_layers=2, window=[2, 4], dtype=F64)
    streamer = StreamingQRNN(qrnn)
    h0, *contexts = streamer.initial_state(7)
    assert h0.shape == (2, 7, 5) and h0.dtype == F64 and not h0.any()
    assert streamer.context_shapes(7) == [(1, 7, 3), (3, 7, 5)]
    assert [tuple(c.shape) for c in contexts] == streamer.context_shapes(7)
    assert all(c.dtype == F64 and not c.any() for c in contexts)
    with pytest.raises(ValueError, match="expected batch_size to be an integer >= 1, got 0"):
        streamer.initial_state(0)


def test_the_wrapped_module_is_shared_and_never_mutated() -> None:
    """Parameters are the QRNN's own; save_prev_x contexts on the module are neither read nor written."""
    qrnn = QRNN(3, 4, num_layers=2, window=2, save_prev_x=True).eval()
    streamer = StreamingQRNN(qrnn)
    assert list(streamer.parameters()) == list(qrnn.parameters())
    assert not streamer.training  # the QRNN's mode
    assert list(streamer.state_dict()) == [f"qrnn.{key}" for key in qrnn.state_dict()]
    streamer(torch.randn(5, 2, 3), *streamer.initial_state(2))
    assert all(layer.prev_x is None for layer in qrnn.layers)


def test_fastai_compat_qrnn_streams() -> None:
    qrnn = fastai.QRNN(3, 4, n_layers=2).eval()  # batch first, window 2 then 1
    streamer = StreamingQRNN(qrnn)
    x = torch.randn(2, 6, 3)
    whole, _ = qrnn(x)
    first, *state = streamer(x[:, :2], *streamer.initial_state(2))
    second, *state = streamer(x[:, 2:], *state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_errors_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match="expected a unidirectional QRNN, got bidirectional=True; the"):
        StreamingQRNN(QRNN(3, 4, bidirectional=True))
    with pytest.raises(TypeError, match=r"expected a torchqrnn\.QRNN, got GRU"):
        StreamingQRNN(torch.nn.GRU(3, 4))
    streamer = StreamingQRNN(QRNN(3, 4, num_layers=2))
    h0, *contexts = streamer.initial_state(2)
    with pytest.raises(ValueError, match=r"expected h0 and 2 contexts .* got h0 and 1; initial_state"):
        streamer(torch.randn(3, 2, 3), h0, contexts[0])
