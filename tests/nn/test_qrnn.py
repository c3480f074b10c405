"""QRNN (the stack) against the equations, nn.GRU's conventions, packed input, streaming and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torchqrnn import QRNN, ForgetMult, QRNNLayer

from .reference import reference_layer, reference_qrnn

F64 = torch.float64


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_stack_matches_equations(backend: str, bidirectional: bool, with_h0: bool) -> None:
    qrnn = QRNN(
        4,
        5,
        num_layers=3,
        bidirectional=bidirectional,
        window=[2, 1, 3],
        zoneout=0.2,
        backend=backend,
        dtype=F64,
    ).eval()
    directions = 2 if bidirectional else 1
    x = torch.randn(8, 2, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(3 * directions, 2, 5, dtype=F64, requires_grad=True) if with_h0 else None
    out, h_n = qrnn(x, h0)
    assert out.shape == (8, 2, 5 * directions) and h_n.shape == (3 * directions, 2, 5)
    expected_out, expected_h_n = reference_qrnn(qrnn, x, h0)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(h_n, expected_h_n)
    inputs = [t for t in (x, h0, *qrnn.parameters()) if t is not None]
    weight = torch.randn_like(out)
    got = torch.autograd.grad((out * weight).sum() + h_n.sum(), inputs)
    expected = torch.autograd.grad((expected_out * weight).sum() + expected_h_n.sum(), inputs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_bidirectional_reads_both_directions_like_gru() -> None:
    """Layer l + 1 of a bidirectional stack reads 2H features; reverse layers run backward, in layers_bwd."""
    qrnn = QRNN(3, 4, num_layers=2, bidirectional=True)
    assert qrnn.layers[1].input_size == 8 and qrnn.layers_bwd[1].input_size == 8
    assert all(layer.backward for layer in qrnn.layers_bwd) and not any(
        layer.backward for layer in qrnn.layers
    )
    gru = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    assert qrnn(x)[0].shape == gru(x)[0].shape and qrnn(x)[1].shape == gru(x)[1].shape


def test_h_n_holds_cell_states() -> None:
    """Unlike nn.GRU, h_n[-1] equals output[-1] only without an output gate (h = o * c otherwise)."""
    x = torch.randn(6, 2, 3)
    plain = QRNN(3, 4, num_layers=2, output_gate=False)
    out, h_n = plain(x)
    torch.testing.assert_close(h_n[-1], out[-1])
    gated = QRNN(3, 4, num_layers=2)
    out, h_n = gated(x)
    assert not torch.allclose(h_n[-1], out[-1])


def test_batch_first_and_unbatched() -> None:
    qrnn = QRNN(3, 4, num_layers=2, bidirectional=True, window=2)
    batch_major = QRNN(3, 4, num_layers=2, bidirectional=True, window=2, batch_first=True)
    batch_major.load_state_dict(qrnn.state_dict())
    x, h0 = torch.randn(6, 2, 3), torch.randn(4, 2, 4)
    out, h_n = qrnn(x, h0)
    out_bf, h_n_bf = batch_major(x.transpose(0, 1), h0)
    torch.testing.assert_close(out_bf, out.transpose(0, 1))
    torch.testing.assert_close(h_n_bf, h_n)
    single, h_single = qrnn(x[:, 1], h0[:, 1])
    assert single.shape == (6, 8) and h_single.shape == (4, 4)
    torch.testing.assert_close(single, out[:, 1])
    torch.testing.assert_close(h_single, h_n[:, 1])


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_equals_each_sequence_alone(enforce_sorted: bool, batch_first: bool) -> None:
    """Padding never touches a real step: outputs and each sequence's final states, both directions."""
    qrnn = QRNN(3, 4, num_layers=2, bidirectional=True, window=2, batch_first=batch_first, dtype=F64)
    lengths = [7, 5, 2] if enforce_sorted else [4, 7, 2, 5]
    x = (
        torch.randn(len(lengths), 7, 3, dtype=F64)
        if batch_first
        else torch.randn(7, len(lengths), 3, dtype=F64)
    )
    x.requires_grad_()
    h0 = torch.randn(4, len(lengths), 4, dtype=F64)
    packed = pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted
    )
    out, h_n = qrnn(packed, h0)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    padded, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
    assert out_lengths.tolist() == lengths
    grads = torch.autograd.grad(padded.square().sum() + h_n.sum(), [x, *qrnn.parameters()])
    expected_grads = [torch.zeros_like(g) for g in grads]
    for b, length in enumerate(lengths):
        sequence = x[b : b + 1, :length] if batch_first else x[:length, b : b + 1]
        alone, h_alone = qrnn(sequence, h0[:, b : b + 1].contiguous())
        mine = padded[b : b + 1, :length] if batch_first else padded[:length, b : b + 1]
        torch.testing.assert_close(mine, alone)
        torch.testing.assert_close(h_n[:, b : b + 1], h_alone)
        alone_grads = torch.autograd.grad(alone.square().sum() + h_alone.sum(), [x, *qrnn.parameters()])
        for total, g in zip(expected_grads, alone_grads, strict=True):
            total += g
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_chunked_streaming_equals_whole_sequence() -> None:
    """window 3 above window 2, carried h and context: by save_prev_x, and explicitly by forward_stream."""
    qrnn = QRNN(3, 4, num_layers=2, window=[3, 2], save_prev_x=True, dtype=F64)
    x = torch.randn(11, 2, 3, dtype=F64)
    whole, h_whole = qrnn(x)
    qrnn.reset()
    outputs, h = [], None
    for start, stop in [(0, 1), (1, 6), (6, 8), (8, 11)]:
        out, h = qrnn(x[start:stop], h)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs), whole)
    torch.testing.assert_close(h, h_whole)
    # the explicit form: nothing saved on the module
    qrnn.reset()
    outputs, h, contexts = [], None, None
    for start, stop in [(0, 4), (4, 5), (5, 11)]:
        out, h, contexts = qrnn.forward_stream(x[start:stop], h, contexts)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs), whole)
    assert [c.shape for c in contexts] == [(2, 2, 3), (1, 2, 4)]
    assert all(layer.prev_x is None for layer in qrnn.layers)


def test_dropout_only_between_layers_and_only_in_training() -> None:
    qrnn = QRNN(3, 16, num_layers=2, dropout=0.5)
    x = torch.randn(6, 4, 3)
    qrnn.eval()
    torch.testing.assert_close(qrnn(x)[0], reference_qrnn(qrnn, x)[0])
    qrnn.train()
    torch.manual_seed(1)
    trained, _ = qrnn(x)
    assert not torch.allclose(trained, qrnn.eval()(x)[0])
    # the dropped input of layer 1 is what its output shows: replay the layer-0 output and its dropout mask
    torch.manual_seed(1)
    qrnn.train()
    first, _, _ = reference_layer(qrnn.layers[0], x)
    dropped = torch.nn.functional.dropout(first, 0.5, True)
    torch.testing.assert_close(trained, reference_layer(qrnn.layers[1], dropped)[0])
    # a single layer has nothing to drop between (and warns so, as nn.GRU: tests/nn/test_gru_habits.py)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        single = QRNN(3, 4, dropout=0.5).train()
    torch.testing.assert_close(single(x)[0], single.eval()(x)[0])


def test_per_layer_options_and_prebuilt_layers() -> None:
    qrnn = QRNN(
        3, 4, num_layers=3, window=[2, 1, 1], zoneout=[0.1, 0.0, 0.2], save_prev_x=[True, False, False]
    )
    assert [layer.window for layer in qrnn.layers] == [2, 1, 1]
    assert [layer.zoneout for layer in qrnn.layers] == [0.1, 0.0, 0.2]
    assert [layer.save_prev_x for layer in qrnn.layers] == [True, False, False]
    layers = [QRNNLayer(3, 4, window=2), QRNNLayer(4, 4)]
    built = QRNN(3, 4, layers=layers)
    assert built.num_layers == 2 and built.layers[0] is layers[0]
    out, h_n = built(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 4) and h_n.shape == (2, 2, 4)


def test_state_dict_keys_match_salesforce_and_fastai() -> None:
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1])
    assert list(qrnn.state_dict()) == [
        "layers.0.linear.weight",
        "layers.0.linear.bias",
        "layers.1.linear.weight",
        "layers.1.linear.bias",
    ]
    # a salesforce checkpoint: the same keys and shapes, built by hand
    checkpoint = {
        "layers.0.linear.weight": torch.randn(12, 6),
        "layers.0.linear.bias": torch.randn(12),
        "layers.1.linear.weight": torch.randn(12, 4),
        "layers.1.linear.bias": torch.randn(12),
    }
    qrnn.load_state_dict(checkpoint)
    torch.testing.assert_close(qrnn.layers[1].linear.weight, checkpoint["layers.1.linear.weight"])
    bidirectional = QRNN(3, 4, num_layers=2, bidirectional=True)
    assert [k for k in bidirectional.state_dict() if k.startswith("layers_bwd")] == [
        "layers_bwd.0.linear.weight",
        "layers_bwd.0.linear.bias",
        "layers_bwd.1.linear.weight",
        "layers_bwd.1.linear.bias",
    ]
    clone = QRNN(3, 4, num_layers=2, bidirectional=True)
    clone.load_state_dict(bidirectional.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(clone(x)[0], bidirectional(x)[0])


def test_salesforce_usage_runs_unchanged() -> None:
    """The seed README's usage, salesforce's keyword arguments and ForgetMult import included."""
    seq_len, batch_size, hidden_size = 7, 20, 256
    size = (seq_len, batch_size, hidden_size)
    x = torch.rand(size)
    qrnn = QRNN(
        hidden_size, hidden_size, num_layers=2, dropout=0.4, window=2, save_prev_x=True, use_cuda=False
    )
    output, hidden = qrnn(x)
    assert output.shape == size and hidden.shape == (2, batch_size, hidden_size)
    qrnn.reset()
    layer = QRNNLayer(hidden_size, hidden_size, save_prev_x=True, zoneout=0, window=2, output_gate=True)
    out, h = layer(x)
    assert out.shape == size and h.shape == (1, batch_size, hidden_size)
    assert (
        ForgetMult()(torch.rand(size), torch.rand(size), torch.zeros(batch_size, hidden_size)).shape == size
    )
    qrnn.flatten_parameters()  # nn.LSTM code calls this


def test_repr_factory_kwargs_and_backend() -> None:
    assert "QRNN(\n  3, 4, num_layers=2, dropout=0.1, bidirectional=True" in repr(
        QRNN(3, 4, 2, dropout=0.1, bidirectional=True)
    )
    assert repr(QRNN(3, 4)).startswith("QRNN(\n  3, 4\n")
    meta = QRNN(3, 4, num_layers=2, device="meta", dtype=F64)
    assert all(p.is_meta and p.dtype == F64 for p in meta.parameters())
    reference = QRNN(3, 4, num_layers=2, bidirectional=True, backend="reference")
    kernel = QRNN(3, 4, num_layers=2, bidirectional=True)
    kernel.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3)
    for got, expected in zip(kernel(x), reference(x), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (lambda: QRNN(3, 4, dropout=1.0), ValueError, r"dropout in \[0, 1\), got 1.0"),
        (lambda: QRNN(3, 4, dropout=-0.5), ValueError, r"dropout in \[0, 1\)"),
        (lambda: QRNN(3, 4, num_layers=0), ValueError, "num_layers to be an integer >= 1"),
        (
            lambda: QRNN(3, 4, bidirectional=True, save_prev_x=True),
            ValueError,
            "save_prev_x cannot be used with bi",
        ),
        (
            lambda: QRNN(3, 4, 2, window=[1, 2, 3]),
            ValueError,
            r"window to have one entry per layer \(2\), got 3",
        ),
        (lambda: QRNN(3, 4, window=0), ValueError, "window to be an integer >= 1"),
        (lambda: QRNN(3, 4, zoneout=[1.5]), ValueError, r"zoneout in \[0, 1\)"),
        (lambda: QRNN(3, 4, layers=[QRNNLayer(3, 5)]), ValueError, r"layers\[0\] to map 3 -> 4 features"),
        (lambda: QRNN(3, 4, layers=[torch.nn.Linear(3, 4)]), TypeError, r"layers\[0\] to be a QRNNLayer"),
        (lambda: QRNN(3, 4, layers=[QRNNLayer(3, 4)], bidirectional=True), ValueError, "unidirectional"),
        (lambda: QRNN(3, 4, backend="cuda"), ValueError, "backend to be one of"),
    ],
)
def test_bad_construction(build, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        build()


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda m: m(torch.randn(5, 2, 4)),
            RuntimeError,
            "input.size.-1. must be equal to input_size. Expected 3",
        ),
        (lambda m: m(torch.randn(5)), ValueError, "got 1-D"),
        (lambda m: m(torch.randn(1, 5, 2, 3)), ValueError, "got 4-D"),
        (lambda m: m(torch.ones(5, 2, 3, dtype=torch.int32)), RuntimeError, "floating-point input"),
        (
            lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4)),
            RuntimeError,
            r"Expected hidden size \(4, 2, 4\)",
        ),
        (
            lambda m: m(torch.randn(5, 3), torch.randn(4, 2, 4)),
            RuntimeError,
            r"Expected hidden size \(4, 4\)",
        ),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(4, 2, 4, dtype=F64)), RuntimeError, "h0 of dtype"),
        (lambda m: m(torch.randn(5, 2, 3), torch.randn(4, 2, 4, device="meta")), RuntimeError, "h0 on cpu"),
    ],
)
def test_bad_input(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call(QRNN(3, 4, num_layers=2, bidirectional=True))


def test_saved_context_errors() -> None:
    qrnn = QRNN(3, 4, num_layers=2, window=2, save_prev_x=True)
    qrnn(torch.randn(5, 3, 3))
    with pytest.raises(RuntimeError, match=r"call reset\(\)"):
        qrnn(torch.randn(5, 2, 3))
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="PackedSequence holds sequences of different lengths"):
        qrnn(packed)
    with pytest.raises(ValueError, match="bidirectional QRNN needs whole sequences"):
        QRNN(3, 4, bidirectional=True).forward_stream(torch.randn(5, 2, 3))


def test_autocast_projection_in_low_precision_recurrence_in_float32() -> None:
    """Under autocast the projection runs in bfloat16; the state passed in stays float32 outside."""
    qrnn = QRNN(8, 16, num_layers=2, window=2)
    x, h0 = torch.randn(5, 3, 8), torch.randn(2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = qrnn(x, h0)
    assert out.dtype == torch.bfloat16 and h_n.dtype == torch.bfloat16
    expected, expected_h_n = qrnn(x, h0)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.02)
    torch.testing.assert_close(h_n.float(), expected_h_n, rtol=0.05, atol=0.02)
    out.float().sum().backward()
    assert qrnn.layers[0].linear.weight.grad.dtype == torch.float32
