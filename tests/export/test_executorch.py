"""ExecuTorch programs run by ExecuTorch's runtime, against eager.

Lowering takes 15-35 s per program on these machines, so four programs are lowered per session, each
covering several options: windows 1-3 and f / fo / ifo pooling in one stack with h0 and a step method; a
bidirectional QRNN without h0; a batch-first QRNNLayer with a step method; and an int8 QRNN. Each is run at
several lengths up to its bound (including 1 and the bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from executorch.runtime import Runtime
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence

from torchqrnn import QRNN, QRNNLayer, StreamingQRNN
from torchqrnn.export import to_executorch

INPUT = 5
MAX_STEPS = 24


class Methods:
    """A loaded program's methods by name; holds the program, which its methods point into."""

    def __init__(self, buffer: bytes) -> None:
        self.program = Runtime.get().load_program(buffer)
        self.methods = {name: self.program.load_method(name) for name in self.program.method_names}

    def __getitem__(self, name: str) -> Callable[[list[Tensor]], list[Tensor]]:
        return self.methods[name].execute

    def names(self) -> set[str]:
        return set(self.methods)


def lower(model: QRNN | QRNNLayer, args: tuple[Tensor | None, ...], **options: object) -> Methods:
    start = time.perf_counter()
    program = to_executorch(model, args, max_steps=MAX_STEPS, **options)  # type: ignore[arg-type]
    print(f"\n{type(model).__name__} lowered to ExecuTorch in {time.perf_counter() - start:.1f} s")
    return Methods(program.buffer)


def close(got: Tensor, expected: Tensor) -> None:
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def stack() -> tuple[QRNN, Methods]:
    """Windows 3, 2, 1 with ifo-, f- and fo-pooling, eval-mode zoneout, h0 an input, batch 3."""
    torch.manual_seed(0)
    layers = [
        QRNNLayer(INPUT, 6, window=3, input_gate=True, zoneout=0.2),
        QRNNLayer(6, 6, window=2, output_gate=False),
        QRNNLayer(6, 6, window=1),
    ]
    model = QRNN(INPUT, 6, layers=layers).eval()
    return model, lower(model, (torch.randn(4, 3, INPUT), torch.randn(3, 3, 6)))


@pytest.fixture(scope="module")
def bidirectional() -> tuple[QRNN, Methods]:
    torch.manual_seed(1)
    model = QRNN(INPUT, 4, num_layers=2, bidirectional=True, window=[2, 1]).eval()
    return model, lower(model, (torch.randn(4, 2, INPUT), None))


@pytest.fixture(scope="module")
def layer() -> tuple[QRNNLayer, Methods]:
    torch.manual_seed(2)
    model = QRNNLayer(INPUT, 7, window=2, batch_first=True).eval()
    return model, lower(model, (torch.randn(1, 4, INPUT), torch.randn(1, 1, 7)))


@pytest.mark.parametrize("steps", [1, 2, 9, MAX_STEPS])
def test_stack_with_h0(stack: tuple[QRNN, Methods], steps: int) -> None:
    model, methods = stack
    x, h0 = torch.randn(steps, 3, INPUT), torch.randn(3, 3, 6)
    output, h_n = methods["forward"]([x, h0])
    with torch.no_grad():
        expected, expected_h = model(x, h0)
    close(output, expected)
    close(h_n, expected_h)


def test_stack_streams_step_by_step(stack: tuple[QRNN, Methods]) -> None:
    """The step method, its state and window contexts fed back, gives the whole sequence's output; the
    sequence is longer than max_steps, which bounds forward only."""
    model, methods = stack
    x = torch.randn(MAX_STEPS + 6, 3, INPUT)
    state = list(StreamingQRNN(model).initial_state(3))
    assert [tuple(c.shape) for c in state[1:]] == [(2, 3, INPUT), (1, 3, 6), (0, 3, 6)]
    outputs = []
    for t in range(x.shape[0]):
        output, *state = methods["step"]([x[t : t + 1], *state])
        outputs.append(output)
    with torch.no_grad():
        expected, expected_h = model(x)
    close(torch.cat(outputs), expected)
    close(state[0], expected_h)


def test_longer_than_max_steps_is_refused_by_the_runtime(stack: tuple[QRNN, Methods]) -> None:
    _, methods = stack
    with pytest.raises(RuntimeError):
        methods["forward"]([torch.randn(MAX_STEPS + 1, 3, INPUT), torch.zeros(3, 3, 6)])


@pytest.mark.parametrize("steps", [1, 5, MAX_STEPS])
def test_bidirectional_without_h0(bidirectional: tuple[QRNN, Methods], steps: int) -> None:
    model, methods = bidirectional
    assert methods.names() == {"forward"}  # a bidirectional model cannot stream
    x = torch.randn(steps, 2, INPUT)
    output, h_n = methods["forward"]([x])
    with torch.no_grad():
        expected, expected_h = model(x)
    close(output, expected)
    close(h_n, expected_h)


@pytest.mark.parametrize("steps", [1, 6, MAX_STEPS])
def test_batch_first_layer(layer: tuple[QRNNLayer, Methods], steps: int) -> None:
    model, methods = layer
    x, h0 = torch.randn(1, steps, INPUT), torch.randn(1, 1, 7)
    output, h_n = methods["forward"]([x, h0])
    with torch.no_grad():
        expected, expected_h = model(x, h0)
    close(output, expected)
    close(h_n, expected_h)


def test_batch_first_layer_streams(layer: tuple[QRNNLayer, Methods]) -> None:
    model, methods = layer
    x = torch.randn(1, 8, INPUT)
    hidden, context = torch.zeros(1, 1, 7), torch.zeros(1, 1, INPUT)
    outputs = []
    for t in range(8):
        output, hidden, context = methods["step"]([x[:, t : t + 1], hidden, context])
        outputs.append(output)
    with torch.no_grad():
        expected, expected_h = model(x)
    close(torch.cat(outputs, dim=1), expected)
    close(hidden, expected_h)


def test_int8_within_three_percent_of_float32() -> None:
    torch.manual_seed(3)
    model = QRNN(16, 32, num_layers=2, window=[2, 1]).eval()
    methods = lower(model, (torch.randn(4, 2, 16), None), quantize=True)
    x = torch.randn(MAX_STEPS, 2, 16)
    output, h_n = methods["forward"]([x])
    with torch.no_grad():
        expected, expected_h = model(x)
    error = ((output - expected).abs().max() / expected.abs().max()).item()
    state_error = ((h_n - expected_h).abs().max() / expected_h.abs().max()).item()
    print(f"int8 ExecuTorch against float32 eager: output {error:.2%}, h_n {state_error:.2%} of the largest")
    assert error < 0.03
    assert state_error < 0.03
    assert error > 1e-6  # the projections really are quantized


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        to_executorch(QRNN(INPUT, 4, zoneout=0.3), torch.randn(3, 2, INPUT), max_steps=8)


def test_packed_sequence_is_refused() -> None:
    packed = pack_padded_sequence(torch.randn(3, 2, INPUT), torch.tensor([3, 2]))
    with pytest.raises(TypeError, match="PackedSequence"):
        to_executorch(QRNN(INPUT, 4).eval(), (packed,), max_steps=8)


def test_saved_context_is_refused() -> None:
    model = QRNN(INPUT, 4, window=2, save_prev_x=True).eval()
    with pytest.raises(ValueError, match="save_prev_x"):
        to_executorch(model, torch.randn(3, 2, INPUT), max_steps=8)


@pytest.mark.parametrize(("steps", "max_steps"), [(9, 8), (1, 8), (3, 1)])
def test_lengths_outside_the_bound_are_refused(steps: int, max_steps: int) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        to_executorch(QRNN(INPUT, 4).eval(), torch.randn(steps, 2, INPUT), max_steps=max_steps)


def test_unbatched_input_is_refused() -> None:
    with pytest.raises(ValueError, match="3-D"):
        to_executorch(QRNN(INPUT, 4).eval(), torch.randn(3, INPUT), max_steps=8)


def test_step_of_a_bidirectional_model_is_refused() -> None:
    model = QRNN(INPUT, 4, bidirectional=True).eval()
    with pytest.raises(ValueError, match="step=False"):
        to_executorch(model, torch.randn(3, 2, INPUT), max_steps=8, step=True)
