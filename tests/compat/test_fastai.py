"""torchqrnn.compat.fastai: fastai's signatures, defaults, shapes and state-dict keys on the real classes."""

from __future__ import annotations

import inspect

import pytest
import torch

from torchqrnn import QRNN as NativeQRNN
from torchqrnn import forget_mult
from torchqrnn.compat.fastai import QRNN, QRNNLayer, forget_mult_CPU

from ..nn.reference import reference_layer


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
    torch.testing.assert_close(layer.prevX, x[:, -1:])  # fastai's layout: (B, window - 1, n_in)
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


# --- the saved window context: fastai's layout, and fastai's answer to a batch-size change ---------------


def test_the_smallest_shrinking_batch_case_runs() -> None:
    q = QRNN(8, 16, 1, save_prev_x=True, window=2)
    q(torch.randn(4, 5, 8))
    output, h = q(torch.randn(2, 5, 8))
    assert output.shape == (2, 5, 16) and h.shape == (1, 2, 16)
    assert q.layers[0].prevX.shape == (2, 1, 8)


def fastai_context(previous: torch.Tensor, batch: int) -> torch.Tensor:
    """fastai 2.3.1's ``prevX`` for a new batch size, time-major: the rows of the old batch that fit, then
    zero rows for the new ones."""
    kept = previous[:, :batch]
    return torch.cat([kept, kept.new_zeros(kept.shape[0], batch - kept.shape[1], kept.shape[2])], dim=1)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("new_batch", [2, 6], ids=["shrinks", "grows"])
@pytest.mark.parametrize("module", ["QRNN", "QRNNLayer"])
def test_a_batch_size_change_trims_or_zero_pads_the_context(
    batch_first: bool, new_batch: int, module: str
) -> None:
    if module == "QRNN":
        model = QRNN(3, 5, 2, batch_first=batch_first, save_prev_x=True, window=[3, 2])
        layers = list(model.layers)
    else:
        model = QRNNLayer(3, 5, save_prev_x=True, window=3, batch_first=batch_first)
        layers = [model]
    first, second = torch.randn(7, 4, 3), torch.randn(6, new_batch, 3)  # time-major here
    feed = (lambda t: t.transpose(0, 1)) if batch_first else (lambda t: t)
    with torch.no_grad():
        model(feed(first))
        saved = [layer.prev_x for layer in layers]  # what each layer kept, time-major
        output, _ = model(feed(second))
        x, contexts = second, []
        for layer, previous in zip(layers, saved, strict=True):
            contexts.append(fastai_context(previous, new_batch))
            x, _, _ = reference_layer(layer, x, context=contexts[-1])
    torch.testing.assert_close(feed(output), x)
    torch.testing.assert_close(layers[0].prev_x, second[-2:])  # then it keeps the new chunk's last steps
    for layer in layers:
        assert layer.prev_x.shape == (layer.window - 1, new_batch, layer.input_size)


def test_the_core_qrnn_still_raises_on_a_batch_size_change() -> None:
    q = NativeQRNN(8, 16, 1, save_prev_x=True, window=2, batch_first=True)
    q(torch.randn(4, 5, 8))
    with pytest.raises(RuntimeError, match=r"holds a batch of 4 but the input has 2; call reset\(\)"):
        q(torch.randn(2, 5, 8))


@pytest.mark.parametrize("batch_first", [True, False])
def test_prev_x_is_read_and_assigned_in_fastai_layout(batch_first: bool) -> None:
    layer = QRNNLayer(3, 4, window=2, save_prev_x=True, batch_first=batch_first)
    context = torch.randn(2, 1, 3) if batch_first else torch.randn(1, 2, 3)  # fastai's layout
    layer.prevX = context
    torch.testing.assert_close(layer.prevX, context)
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    with torch.no_grad():
        output, _ = layer(x)
        time_major = (lambda t: t.transpose(0, 1)) if batch_first else (lambda t: t)
        expected, _, _ = reference_layer(layer, time_major(x), context=time_major(context))
    torch.testing.assert_close(time_major(output), expected)
    torch.testing.assert_close(layer.prevX, x[:, -1:] if batch_first else x[-1:])
