"""``Stepper``: one step per call, state inside; the fused in-place step equals the whole sequence and the
stepper's own generic path, follows its model's parameters and settings, and refuses bad input clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchqrnn import QRNN, QRNNLayer, Stepper, StreamingQRNN
from torchqrnn.nn import stepper as stepper_module

TOLERANCES = {torch.float32: {}, torch.float64: {}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


def whole(model: QRNN | QRNNLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model on the whole sequence ``x`` (T, B, I): output (T, B, H), cell states (L, B, H)."""
    with torch.no_grad():
        return model(x)


def stepped(stepper: Stepper, x: torch.Tensor, unbatched: bool = False) -> torch.Tensor:
    steps = [stepper(x[t, 0] if unbatched else x[t]) for t in range(x.shape[0])]
    return torch.stack(steps).reshape(x.shape[0], x.shape[1], -1)


STACKS = [
    dict(num_layers=1, window=1),
    dict(num_layers=1, window=2, zoneout=0.3),
    dict(num_layers=2, window=[2, 1], output_gate=False),
    dict(num_layers=3, window=[3, 1, 2], input_gate=True, bias=False),
]


@pytest.mark.parametrize("options", STACKS, ids=lambda o: str(o["window"]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_fused_steps_equal_the_whole_sequence(options: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    options = dict(options)
    bias = options.pop("bias", True)
    qrnn = QRNN(7, 6, **options).eval().to(dtype)
    if not bias:
        for layer in qrnn.layers:
            layer.linear.bias = None
    x = torch.randn(9, 1, 7, dtype=dtype)
    expected, h_n = whole(qrnn, x)
    stepper = Stepper(qrnn)
    assert stepper._fast is not None, "the fused step was not planned"
    for unbatched in (False, True):
        stepper.reset()
        torch.testing.assert_close(stepped(stepper, x, unbatched), expected, **TOLERANCES[dtype])
        torch.testing.assert_close(stepper.state[0], h_n, **TOLERANCES[dtype])


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("window", [1, 3])
def test_a_layer_steps_as_it_runs_whole(backward: bool, window: int) -> None:
    torch.manual_seed(1)
    layer = QRNNLayer(5, 4, window=window, backward=backward, dtype=torch.float64).eval()
    x = torch.randn(8, 1, 5, dtype=torch.float64)
    stepper = Stepper(layer)
    assert stepper._fast is not None
    order = range(7, -1, -1) if backward else range(8)  # (a backward layer streams from the end)
    outputs = {t: stepper(x[t]) for t in order}
    expected, h_n = whole(layer, x)
    torch.testing.assert_close(torch.stack([outputs[t] for t in range(8)]), expected)
    torch.testing.assert_close(stepper.state[0], h_n)


def test_the_fused_and_the_generic_path_agree_and_carry_one_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps alternate between the fused kernel and ``forward_stream`` (forced by deterministic
    algorithms every other step): the state each leaves is the other's start."""
    torch.manual_seed(2)
    qrnn = QRNN(5, 4, num_layers=2, window=[2, 3]).eval().double()
    x = torch.randn(10, 1, 5, dtype=torch.float64)
    expected, h_n = whole(qrnn, x)
    stepper = Stepper(qrnn)
    calls = []
    generic = Stepper._generic
    monkeypatch.setattr(Stepper, "_generic", lambda self, x: calls.append(1) or generic(self, x))
    outputs = []
    for t in range(10):
        torch.use_deterministic_algorithms(t % 2 == 1)
        try:
            outputs.append(stepper(x[t]))
        finally:
            torch.use_deterministic_algorithms(False)
    assert len(calls) == 5
    torch.testing.assert_close(torch.stack(outputs), expected)
    torch.testing.assert_close(stepper.state[0], h_n)


def test_a_batch_steps_through_the_model_and_runs_its_hooks() -> None:
    torch.manual_seed(3)
    qrnn = QRNN(5, 4, num_layers=2, window=[1, 2], batch_first=True).eval()
    x = torch.randn(6, 3, 5)
    with torch.no_grad():
        expected, h_n = qrnn(x.transpose(0, 1))
    expected = expected.transpose(0, 1)
    stepper = Stepper(qrnn, batch_size=3)
    assert stepper._fast is None
    seen = []
    qrnn.layers[1].register_forward_hook(lambda *args: seen.append(1))
    torch.testing.assert_close(stepped(stepper, x), expected)
    torch.testing.assert_close(stepper.state[0], h_n)
    assert len(seen) == 6


def test_changes_to_the_model_are_followed() -> None:
    """In-place changes are read as they are; a replaced parameter or projection, a new mode or a hook
    makes the stepper decide again (hooks: through the model, which runs them)."""
    torch.manual_seed(4)
    qrnn = QRNN(5, 4, num_layers=2, window=[2, 1], zoneout=0.25).eval()
    x = torch.randn(3, 1, 5)
    stepper = Stepper(qrnn)

    def check() -> None:
        stepper.reset()
        torch.testing.assert_close(stepped(stepper, x), whole(qrnn, x)[0])

    check()
    with torch.no_grad():
        qrnn.layers[0].linear.weight.mul_(0.5)  # in place
    check()
    qrnn.layers[1].linear.weight.data = torch.randn(12, 4)  # replaced storage
    check()
    qrnn.layers[0].linear.bias = nn.Parameter(torch.randn(12))  # replaced parameter
    check()
    qrnn.layers[1].linear = nn.Linear(4, 12)  # replaced projection
    check()
    qrnn.layers[0].zoneout = 0.5  # (evaluation multiplies f by 1 - zoneout)
    qrnn.train()
    qrnn.eval()
    check()
    assert stepper._fast is not None
    seen = []
    handle = qrnn.layers[0].register_forward_pre_hook(lambda *args: seen.append(1))
    check()
    assert len(seen) == 3 + 1  # each step, and the whole sequence once
    handle.remove()
    check()
    assert stepper._fast is not None and len(seen) == 4


def test_training_mode_draws_zoneout_through_the_model() -> None:
    qrnn = QRNN(5, 4, zoneout=0.5)
    stepper = Stepper(qrnn)
    assert stepper._fast is None  # (a random mask each step: the model's own path)
    out = stepper(torch.randn(5))
    assert out.shape == (4,) and not out.requires_grad


def test_state_is_copied_out_and_in() -> None:
    torch.manual_seed(5)
    streamer = StreamingQRNN(QRNN(5, 4, num_layers=2, window=[3, 1]).eval())
    stepper = Stepper(streamer)
    x = torch.randn(7, 1, 5)
    for t in range(4):
        stepper(x[t])
    saved = stepper.state
    assert [tuple(s.shape) for s in saved] == [(2, 1, 4), (2, 1, 5), (0, 1, 4)]
    rest = stepped_from(stepper, x[4:])
    stepper.reset()
    stepper.state = saved
    torch.testing.assert_close(stepped_from(stepper, x[4:]), rest)
    out, *_ = streamer(x[4:], *saved)
    torch.testing.assert_close(rest, out)
    with pytest.raises(ValueError, match=r"expected \(h, \*contexts\) of shapes"):
        stepper.state = saved[:2]
    with pytest.raises(
        ValueError, match=r"expected tensors of dtype torch.float32 on cpu \(the model's\), got torch.float64"
    ):
        stepper.state = [t.double() for t in saved]


def stepped_from(stepper: Stepper, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([stepper(x[t]) for t in range(x.shape[0])])


def test_outputs_are_fresh_tensors_that_need_no_grad() -> None:
    qrnn = QRNN(5, 4).eval()
    stepper = Stepper(qrnn)
    x = torch.randn(5, requires_grad=True)
    first, second = stepper(x), stepper(x)
    assert not first.requires_grad and first.data_ptr() != second.data_ptr()
    assert not torch.equal(first, second)  # (the state moved on)


def test_bad_arguments_are_named() -> None:
    qrnn = QRNN(5, 4).eval()
    with pytest.raises(ValueError, match="unidirectional"):
        Stepper(QRNN(5, 4, bidirectional=True))
    with pytest.raises(TypeError, match="got LSTM"):
        Stepper(nn.LSTM(5, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size to be an integer >= 1, got 0"):
        Stepper(qrnn, batch_size=0)
    stepper = Stepper(qrnn, batch_size=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(2, 5\) \(batch_size=2\), got \(3, 5\)"):
        stepper(torch.randn(3, 5))
    with pytest.raises(
        ValueError, match=r"expected input of shape \(2, 5\), got a Tensor of shape \(1, 2, 5\)"
    ):
        stepper(torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match=r"expected input of shape \(1, 5\) or \(5,\), got list"):
        Stepper(qrnn)([0.0] * 5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="input_size"):
        Stepper(qrnn)(torch.randn(1, 6))  # (the model's own check names the mismatch)


def test_the_fused_kernel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where planned, a call is the kernel alone: the model's path is never entered."""
    qrnn = QRNN(5, 4, num_layers=2).eval()
    stepper = Stepper(qrnn)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the generic path ran")

    monkeypatch.setattr(stepper_module.Stepper, "_generic", refuse)
    for _ in range(3):
        stepper(torch.randn(1, 5))


def test_dropout_between_layers_in_training_is_drawn_by_the_model() -> None:
    """As a module call decides (one decision for both): a training QRNN with dropout steps layer by layer."""
    qrnn = QRNN(5, 4, num_layers=2, dropout=0.5)
    stepper = Stepper(qrnn)
    assert stepper._fast is None
    qrnn.eval()
    stepper(torch.randn(5))
    assert stepper._fast is not None  # (the mode changed: decided again)


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_layer_steps_a_batch_through_forward_stream(batch_first: bool) -> None:
    torch.manual_seed(6)
    layer = QRNNLayer(5, 4, window=2, batch_first=batch_first).eval()
    x = torch.randn(6, 2, 5)
    expected, h_n = whole(layer, x.transpose(0, 1) if batch_first else x)
    stepper = Stepper(layer, batch_size=2)
    got = stepped(stepper, x)
    torch.testing.assert_close(got.transpose(0, 1) if batch_first else got, expected)
    torch.testing.assert_close(stepper.state[0], h_n)


def test_a_copy_steps_on_its_own_state() -> None:
    """The fused step reads and writes its buffers by address: a deep copy (or an unpickled stepper) plans
    its own, so the two run independently from the same point."""
    import copy
    import pickle

    torch.manual_seed(7)
    qrnn = QRNN(5, 4, num_layers=2, window=[2, 1]).eval()
    x = torch.randn(6, 1, 5)
    stepper = Stepper(qrnn)
    for t in range(3):
        stepper(x[t])
    for twin in (copy.deepcopy(stepper), pickle.loads(pickle.dumps(stepper))):
        assert twin._fast is not None
        ahead = stepped_from(twin, x[3:])
        assert [torch.equal(a, b) for a, b in zip(twin.state, stepper.state, strict=True)].count(False) > 0
        torch.testing.assert_close(ahead, whole(qrnn, x)[0][3:])
    torch.testing.assert_close(stepped_from(stepper, x[3:]), whole(qrnn, x)[0][3:])


@pytest.mark.parametrize("wrap", ["hook", "parametrized", "quantized", "frozen"])
def test_wrapped_projections_step_as_the_model_runs_them(wrap: str) -> None:
    """A projection the layer must call as its module (a hook on it, a parametrization, int8
    ``quantize_dynamic``) steps through the model; frozen parameters change nothing. Each equals the model."""
    torch.manual_seed(8)
    qrnn = QRNN(6, 5, num_layers=2, window=[2, 1]).eval()
    if wrap == "hook":
        qrnn.layers[1].linear.register_forward_hook(lambda module, args, out: out * 0.5)
    elif wrap == "parametrized":
        torch.nn.utils.parametrize.register_parametrization(qrnn.layers[0].linear, "weight", _Halved())
    elif wrap == "quantized":
        qrnn = torch.ao.quantization.quantize_dynamic(qrnn, {nn.Linear}, dtype=torch.qint8)
    else:
        qrnn.requires_grad_(False)
    x = torch.randn(7, 1, 6)
    stepper = Stepper(qrnn)
    assert (stepper._fast is not None) == (wrap == "frozen")
    # the model fed one step per call (int8 quantizes each call's input on its own scale, so a stream of
    # single steps is what a stepper must equal; for the others it is the whole sequence too)
    streamer = StreamingQRNN(qrnn)
    state, expected = streamer.initial_state(1), []
    with torch.no_grad():
        for t in range(7):
            out, *state = streamer(x[t : t + 1], *state)
            expected.append(out)
    torch.testing.assert_close(stepped(stepper, x), torch.cat(expected))
    if wrap != "quantized":
        torch.testing.assert_close(torch.cat(expected), whole(qrnn, x)[0])


class _Halved(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 0.5
