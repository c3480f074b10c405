"""What people coming from nn.GRU / nn.LSTM expect: its dropout warning, dtype errors that say how to convert,
errors that name the module they called, and what an LSTM's ``out, (h, c) = ...`` does to a QRNN's h_n."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from torchqrnn import QRNN, QRNNLayer

F64 = torch.float64


def warnings_of(
    build: Callable[..., object], *args: object, **kwargs: object
) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(*args, **kwargs)
    return caught


@pytest.mark.parametrize("dropout", [0.5, 0.25])
def test_dropout_with_one_layer_warns_as_gru_does(dropout: float) -> None:
    (gru_warning,) = warnings_of(lambda: nn.GRU(4, 5, num_layers=1, dropout=dropout))
    (qrnn_warning,) = warnings_of(lambda: QRNN(4, 5, num_layers=1, dropout=dropout))
    assert qrnn_warning.category is gru_warning.category is UserWarning
    assert str(qrnn_warning.message) == str(gru_warning.message)
    assert qrnn_warning.filename == __file__  # points at the caller's line, not at torchqrnn
    # salesforce's layers= with a single layer is one layer too
    (layers_warning,) = warnings_of(lambda: QRNN(4, 5, dropout=dropout, layers=[QRNNLayer(4, 5)]))
    assert str(layers_warning.message) == str(gru_warning.message)


def test_dropout_warns_only_where_gru_does() -> None:
    for kwargs in (dict(num_layers=2, dropout=0.5), dict(num_layers=1, dropout=0.0), dict(num_layers=3)):
        assert warnings_of(nn.GRU, 4, 5, **kwargs) == []
        assert warnings_of(QRNN, 4, 5, **kwargs) == []
    assert warnings_of(lambda: QRNN(4, 5, dropout=0.5, layers=[QRNNLayer(4, 5), QRNNLayer(5, 5)])) == []


def test_an_input_of_another_dtype_is_told_how_to_convert() -> None:
    x = torch.randn(6, 2, 4, dtype=F64)
    for model in (QRNN(4, 5, num_layers=2), QRNNLayer(4, 5)):
        owner = type(model).__name__
        with pytest.raises(RuntimeError) as error:
            model(x)
        assert str(error.value) == (
            f"{owner}: expected input of dtype torch.float32 (the parameters'), got torch.float64. "
            "Convert the input: input.to(torch.float32), or the model: model.to(torch.float64)"
        )
        # both suggestions run, and agree with each other up to float32 rounding
        converted_input, _ = model(x.to(torch.float32))
        converted_model, _ = model.to(F64)(x)
        torch.testing.assert_close(converted_model, converted_input.to(F64), rtol=1e-5, atol=1e-6)


def test_a_state_of_another_dtype_is_told_how_to_convert() -> None:
    x = torch.randn(6, 2, 4)
    qrnn, layer = QRNN(4, 5, num_layers=2), QRNNLayer(4, 5, window=2)
    h0 = torch.randn(2, 2, 5, dtype=F64)
    with pytest.raises(RuntimeError, match=re.escape("got torch.float64. Convert it: h0.to(torch.float32)")):
        qrnn(x, h0)
    qrnn(x, h0.to(torch.float32))
    with pytest.raises(
        RuntimeError, match=re.escape("got torch.float64. Convert it: hidden.to(torch.float32)")
    ):
        layer(x, h0[0])
    layer(x, h0[0].to(torch.float32))
    context = torch.randn(1, 2, 4, dtype=F64)
    with pytest.raises(RuntimeError, match=re.escape("Convert it: context.to(torch.float32)")):
        layer.forward_stream(x, None, context)
    layer.forward_stream(x, None, context.to(torch.float32))


def test_errors_inside_a_qrnns_layers_name_the_qrnn() -> None:
    # a saved window context meets a smaller batch (the error fastai users met in SentenceEncoder)
    qrnn = QRNN(4, 5, num_layers=2, window=2, save_prev_x=True)
    qrnn(torch.randn(3, 4, 4))
    with pytest.raises(RuntimeError) as error:
        qrnn(torch.randn(3, 2, 4))
    assert str(error.value).startswith(
        "QRNN layers[0]: the window context holds a batch of 4 but the input has 2"
    )
    assert "QRNNLayer" not in str(error.value)

    # a projection replaced by one of the wrong width, in the second layer, either direction
    for name in ("layers", "layers_bwd"):
        qrnn = QRNN(4, 5, num_layers=2, bidirectional=True)
        getattr(qrnn, name)[1].linear = nn.Linear(10, 7)
        with pytest.raises(RuntimeError) as error:
            qrnn(torch.randn(3, 2, 4))
        assert str(error.value).startswith(f"QRNN {name}[1]: expected linear.out_features = 15 (3 gates")
        assert "QRNNLayer" not in str(error.value)

    # the same mistakes on a QRNNLayer of its own still name the layer
    layer = QRNNLayer(4, 5, window=2, save_prev_x=True)
    layer(torch.randn(3, 4, 4))
    with pytest.raises(RuntimeError, match=r"^QRNNLayer: the window context holds a batch of 4 but"):
        layer(torch.randn(3, 2, 4))
    layer.linear = nn.Linear(8, 7)
    layer.reset()
    with pytest.raises(RuntimeError, match=r"^QRNNLayer: expected linear.out_features = 15"):
        layer(torch.randn(3, 2, 4))


def test_lstm_style_unpacking_splits_the_layers() -> None:
    """``out, (h, c) = qrnn(x)``, an nn.LSTM habit, unpacks h_n along its first dimension: with 2 layers it
    silently gives the two layers' cell states (what docs/migrating.rst says), otherwise it fails."""
    x = torch.randn(6, 3, 4)
    qrnn = QRNN(4, 5, num_layers=2)
    out, (h, c) = qrnn(x)
    expected_out, h_n = qrnn(x)
    assert torch.equal(out, expected_out)
    assert torch.equal(h, h_n[0]) and torch.equal(c, h_n[1])  # layer 0's and layer 1's states, not (h, c)
    with pytest.raises(ValueError, match="not enough values to unpack"):
        _, (h, c) = QRNN(4, 5, num_layers=1)(x)
    with pytest.raises(ValueError, match="too many values to unpack"):
        _, (h, c) = QRNN(4, 5, num_layers=3)(x)
