"""QRNNLayer against the layer written from the equations (tests/nn/reference.py), and its contract."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torchqrnn import QRNNLayer

from .reference import reference_layer

F64 = torch.float64
BACKENDS = ["cpu", "reference"]


def parameters_and(layer: QRNNLayer, *tensors: torch.Tensor | None) -> list[torch.Tensor]:
    return [t for t in (*tensors, *layer.parameters()) if t is not None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [1, 2, 3, 4])
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(
    ("output_gate", "input_gate"), [(True, False), (False, False), (True, True), (False, True)]
)
def test_layer_matches_equations(backend, window, backward, output_gate, input_gate) -> None:
    """Outputs, final state and the gradients of input, h0 and every weight, in float64."""
    layer = QRNNLayer(
        5, 7, window=window, output_gate=output_gate, input_gate=input_gate, backward=backward,
        backend=backend, dtype=F64,
    )  # fmt: skip
    x = torch.randn(9, 3, 5, dtype=F64, requires_grad=True)
    h0 = torch.randn(3, 7, dtype=F64, requires_grad=True) if window % 2 else None
    out, h_n = layer(x, h0)
    expected_out, expected_c, _ = reference_layer(layer, x, h0)
    torch.testing.assert_close(out, expected_out)
    assert h_n.shape == (1, 3, 7)
    torch.testing.assert_close(h_n[0], expected_c)
    weight = torch.randn_like(out)
    inputs = parameters_and(layer, x, h0)
    got = torch.autograd.grad((out * weight).sum() + h_n.square().sum(), inputs)
    expected = torch.autograd.grad((expected_out * weight).sum() + expected_c.square().sum(), inputs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backward", [False, True])
def test_batch_first_and_unbatched(backward: bool) -> None:
    time_major = QRNNLayer(4, 6, window=2, backward=backward)
    batch_major = QRNNLayer(4, 6, window=2, backward=backward, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    x, h0 = torch.randn(8, 3, 4), torch.randn(3, 6)
    out, h_n = time_major(x, h0)
    out_bf, h_n_bf = batch_major(x.transpose(0, 1).contiguous(), h0)
    torch.testing.assert_close(out_bf, out.transpose(0, 1))
    assert out_bf.is_contiguous()
    torch.testing.assert_close(h_n_bf, h_n)
    single, h_single = time_major(x[:, 1], h0[1])
    assert single.shape == (8, 6) and h_single.shape == (1, 6)
    torch.testing.assert_close(single, out[:, 1])
    torch.testing.assert_close(h_single[0], h_n[0, 1])


def test_hidden_accepts_the_shape_the_layer_returns() -> None:
    """salesforce's loop: ``out, h = layer(x, h)`` with ``h`` of shape (1, B, H)."""
    layer = QRNNLayer(4, 6)
    x = torch.randn(5, 2, 4)
    _, h = layer(x)
    out_a, _ = layer(x, h)
    out_b, _ = layer(x, h[0])
    torch.testing.assert_close(out_a, out_b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zoneout_training_freezes_a_fraction_p(backend: str) -> None:
    """With f-pooling, a zoned-out unit (f * 0) keeps c exactly: that fraction must be close to p."""
    p = 0.3
    layer = QRNNLayer(8, 64, zoneout=p, output_gate=False, backend=backend).train()
    x = torch.randn(60, 8, 8)
    out, _ = layer(x)
    frozen = (out[1:] == out[:-1]).double().mean().item()
    count = out[1:].numel()
    assert abs(frozen - p) < 5 * (p * (1 - p) / count) ** 0.5, frozen
    # a mask drawn afresh on every call
    again, _ = layer(x)
    assert not torch.equal(out, again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zoneout_training_matches_equations_with_the_same_mask(backend: str) -> None:
    layer = QRNNLayer(3, 5, zoneout=0.4, window=2, backend=backend, dtype=F64).train()
    x = torch.randn(7, 2, 3, dtype=F64, requires_grad=True)
    torch.manual_seed(7)
    out, h_n = layer(x)
    torch.manual_seed(7)
    mask = torch.empty(7, 2, 5, dtype=torch.bool).bernoulli_(0.6)  # the layer's draw, replayed
    expected_out, expected_c, _ = reference_layer(layer, x, forget_mask=mask)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(h_n[0], expected_c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_zoneout_gradients_flow_in_every_mode(backend: str, training: bool) -> None:
    layer = QRNNLayer(3, 4, zoneout=0.5, backend=backend, dtype=F64).train(training)
    x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)

    def run(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same zoneout mask on every evaluation of the function
        return layer(x)[0]

    assert torch.autograd.gradcheck(run, (x,))
    if not training:
        out, _ = layer(x)
        torch.testing.assert_close(out, reference_layer(layer, x)[0])  # f * (1 - p) in evaluation


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("chunks", [[4, 4, 4], [1, 5, 2, 4], [2, 1, 1, 8]])
def test_save_prev_x_chunks_equal_the_whole_sequence(backward: bool, chunks: list[int]) -> None:
    """window 3, h carried by the caller and the context by the layer; chunks shorter than the window too."""
    layer = QRNNLayer(4, 6, window=3, save_prev_x=True, backward=backward, dtype=F64)
    x = torch.randn(sum(chunks), 2, 4, dtype=F64)
    whole, h_whole = layer(x)
    layer.reset()
    bounds = torch.tensor([0, *chunks]).cumsum(0).tolist()
    pieces = [(bounds[k], bounds[k + 1]) for k in range(len(chunks))]
    # forward chunks run in time order; a backward layer reads the chunks from the end of the sequence
    outputs, h = {}, None
    for start, stop in reversed(pieces) if backward else pieces:
        outputs[start], h = layer(x[start:stop], h)
    torch.testing.assert_close(torch.cat([outputs[start] for start, _ in pieces]), whole)
    torch.testing.assert_close(h, h_whole)
    expected_context = x[:2] if backward else x[-2:]
    torch.testing.assert_close(layer.prev_x, expected_context)
    assert not layer.prev_x.requires_grad


@pytest.mark.parametrize("backward", [False, True])
def test_forward_stream_carries_context_without_mutating(backward: bool) -> None:
    layer = QRNNLayer(4, 6, window=3, backward=backward, dtype=F64)
    x = torch.randn(10, 2, 4, dtype=F64)
    whole, h_whole = layer(x)
    pieces = [(0, 3), (3, 4), (4, 10)]
    outputs, h, context = {}, None, None
    for start, stop in reversed(pieces) if backward else pieces:
        outputs[start], h, context = layer.forward_stream(x[start:stop], h, context)
    torch.testing.assert_close(torch.cat([outputs[s] for s, _ in pieces]), whole)
    torch.testing.assert_close(h, h_whole)
    assert layer.prev_x is None
    # an explicit context equals the reference's windows reading it
    context = torch.randn(2, 2, 4, dtype=F64)
    out, _, next_context = layer.forward_stream(x, None, context)
    expected_out, _, expected_context = reference_layer(layer, x, context=context)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(next_context, expected_context)


def test_packed_sequence_equals_each_sequence_alone() -> None:
    for backward in (False, True):
        layer = QRNNLayer(3, 5, window=2, backward=backward)
        lengths = [4, 7, 2]
        x = torch.randn(7, 3, 3)
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        out, h_n = layer(packed)
        assert torch.equal(out.sorted_indices, packed.sorted_indices)
        padded, _ = pad_packed_sequence(out)
        for b, length in enumerate(lengths):
            alone, h_alone = layer(x[:length, b : b + 1])
            torch.testing.assert_close(padded[:length, b : b + 1], alone)
            torch.testing.assert_close(h_n[:, b : b + 1], h_alone)


def test_state_dict_keys_and_round_trip() -> None:
    layer = QRNNLayer(4, 6, window=2)
    assert list(layer.state_dict()) == ["linear.weight", "linear.bias"]
    assert layer.linear.weight.shape == (3 * 6, 2 * 4)
    clone = QRNNLayer(4, 6, window=2)
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(clone(x)[0], layer(x)[0])
    assert QRNNLayer(4, 6, input_gate=True).linear.weight.shape == (4 * 6, 4)
    assert QRNNLayer(4, output_gate=False, bias=False).linear.bias is None


def test_factory_kwargs_repr_and_defaults() -> None:
    layer = QRNNLayer(4, dtype=F64, device="meta")
    assert layer.hidden_size == 4 and layer.linear.weight.dtype == F64 and layer.linear.weight.is_meta
    assert "QRNNLayer(\n  4, 4\n" in repr(QRNNLayer(4))
    text = repr(QRNNLayer(4, 8, window=2, zoneout=0.1, backward=True, input_gate=True))
    assert "4, 8, window=2, input_gate=True, zoneout=0.1, backward=True" in text
    # salesforce's positional order, use_cuda accepted and ignored
    salesforce = QRNNLayer(4, 8, True, 0.0, 2, False, True)
    assert salesforce.save_prev_x and salesforce.window == 2 and not salesforce.output_gate


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (lambda: QRNNLayer(4, window=0), ValueError, "window to be an integer >= 1, got 0"),
        (lambda: QRNNLayer(0), ValueError, "input_size to be an integer >= 1, got 0"),
        (lambda: QRNNLayer(4, zoneout=1.0), ValueError, r"zoneout in \[0, 1\), got 1.0"),
        (lambda: QRNNLayer(4, zoneout=-0.1), ValueError, r"zoneout in \[0, 1\)"),
        (lambda: QRNNLayer(4, backend="gpu"), ValueError, "backend to be one of"),
    ],
)
def test_bad_construction(build, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        build()


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda m: m(torch.randn(5, 2, 3)),
            RuntimeError,
            "input.size.-1. must be equal to input_size. Expected 4, got 3",
        ),
        (lambda m: m(torch.randn(5)), ValueError, "got 1-D of shape"),
        (lambda m: m(torch.randn(5, 2, 3, 4)), ValueError, "got 4-D of shape"),
        (
            lambda m: m(torch.ones(5, 2, 4, dtype=torch.long)),
            RuntimeError,
            "floating-point input, got torch.int64",
        ),
        (lambda m: m(torch.randn(5, 2, 4, dtype=F64)), RuntimeError, "input of dtype torch.float32"),
        (
            lambda m: m(torch.randn(5, 2, 4), torch.randn(3, 6)),
            RuntimeError,
            r"Expected hidden size \(2, 6\) or",
        ),
        (lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 6, dtype=F64)), RuntimeError, "hidden of dtype"),
        (lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 6, device="meta")), RuntimeError, "hidden on cpu"),
        (lambda m: m(torch.randn(5, 2, 4), [0.0]), TypeError, "hidden to be a Tensor, got list"),
        (lambda m: m("text"), TypeError, "Tensor or PackedSequence, got str"),
    ],
)
def test_bad_input(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call(QRNNLayer(4, 6, window=2))


def test_batch_size_change_with_saved_context_says_reset() -> None:
    layer = QRNNLayer(4, 6, window=2, save_prev_x=True)
    layer(torch.randn(5, 3, 4))
    with pytest.raises(RuntimeError, match=r"batch of 3 but the input has 2; call reset\(\)"):
        layer(torch.randn(5, 2, 4))
    layer.reset()
    layer(torch.randn(5, 2, 4))
    packed = pack_padded_sequence(torch.randn(5, 2, 4), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="PackedSequence holds sequences of different lengths"):
        layer(packed)
    with pytest.raises(ValueError, match="PackedSequence data of shape"):
        QRNNLayer(3)(packed)
