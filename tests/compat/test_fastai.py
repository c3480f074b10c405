"""torchqrnn.compat.fastai: fastai's signatures, defaults, shapes and state-dict keys on the real classes."""

from __future__ import annotations

import inspect

import pytest
import torch

from torchqrnn import QRNN as NativeQRNN
from torchqrnn import forget_mult
from torchqrnn.compat.fastai import QRNN, QRNNLayer, forget_mult_CPU


def fastai_forget_mult_loop(x, f, first_h=None, batch_first=True, backward=False):
    """fastai 2.3.1's documented CPU semantics, as a loop (argument order x, f)."""
    dim = 1 if batch_first else 0
    steps = range(x.shape[dim] - 1, -1, -1) if backward else range(x.shape[dim])
    h, out = first_h, [None] * x.shape[dim]
    for t in steps:
        x_t, f_t = x.select(dim, t), f.select(dim, t)
        h = x_t * f_t if h is None else x_t * f_t + (1 - f_t) * h
        out[t] = h
    return torch.stack(out, dim)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("backward", [False, True])
def test_forget_mult_cpu_argument_order_and_layout(batch_first: bool, backward: bool) -> None:
    x, f = torch.randn(3, 5, 4), torch.rand(3, 5, 4)
    first_h = torch.randn(3 if batch_first else 5, 4)
    got = forget_mult_CPU(x, f, first_h, batch_first=batch_first, backward=backward)
    torch.testing.assert_close(got, fastai_forget_mult_loop(x, f, first_h, batch_first, backward))
    torch.testing.assert_close(forget_mult_CPU(x, f), forget_mult(f, x, batch_first=True))


def test_signatures_and_defaults() -> None:
    layer = inspect.signature(QRNNLayer)
    assert list(layer.parameters) == [
        "input_size", "hidden_size", "save_prev_x", "zoneout", "window", "output_gate", "batch_first",
        "backward",
    ]  # fmt: skip
    assert layer.parameters["batch_first"].default is True
    stack = inspect.signature(QRNN)
    assert list(stack.parameters) == [
        "input_size", "hidden_size", "n_layers", "batch_first", "dropout", "bidirectional", "save_prev_x",
        "zoneout", "window", "output_gate",
    ]  # fmt: skip
    qrnn = QRNN(5, 6, n_layers=3)
    assert qrnn.batch_first and [layer.window for layer in qrnn.layers] == [2, 1, 1]
    assert [layer.window for layer in QRNN(5, 6, n_layers=2, window=1).layers] == [1, 1]


def test_layer_returns_fastai_shapes() -> None:
    layer = QRNNLayer(4, 6, window=2, save_prev_x=True)
    x = torch.randn(3, 7, 4)  # batch first
    out, h = layer(x)
    assert out.shape == (3, 7, 6) and h.shape == (3, 6)
    torch.testing.assert_close(layer.prevX, x[:, -1:].transpose(0, 1))
    out2, _ = layer(x, h)  # fastai feeds (B, H) back
    assert out2.shape == (3, 7, 6)


def test_stack_state_dict_loads_fastai_unidirectional_checkpoint() -> None:
    qrnn = QRNN(5, 6, n_layers=2)
    checkpoint = {
        "layers.0.linear.weight": torch.randn(18, 10),
        "layers.0.linear.bias": torch.randn(18),
        "layers.1.linear.weight": torch.randn(18, 6),
        "layers.1.linear.bias": torch.randn(18),
    }
    qrnn.load_state_dict(checkpoint)
    native = NativeQRNN(5, 6, num_layers=2, window=[2, 1], batch_first=True)
    native.load_state_dict(checkpoint)
    x = torch.randn(3, 7, 5)
    for got, expected in zip(qrnn(x), native(x), strict=True):
        torch.testing.assert_close(got, expected)
    out, h = qrnn(x)
    assert out.shape == (3, 7, 6) and h.shape == (2, 3, 6)


def test_bidirectional_is_gru_style() -> None:
    """fastai's two towers fed each direction only its own; here layer 1 reads both directions (2H)."""
    qrnn = QRNN(5, 6, n_layers=2, bidirectional=True)
    assert qrnn.layers[1].input_size == 12 and qrnn.layers_bwd[1].input_size == 12
    out, h = qrnn(torch.randn(3, 7, 5))
    assert out.shape == (3, 7, 12) and h.shape == (4, 3, 6)
