"""torch.export of QRNNs in evaluation mode: dynamic time and batch, saved and loaded programs."""

from __future__ import annotations

import pathlib

import pytest
import torch

from torchqrnn import QRNN, QRNNLayer, StreamingQRNN
from torchqrnn.export import dynamic_shapes, export_program

SHAPES = [(6, 3), (1, 1), (13, 2), (2, 5)]  # (T, B): the example's, then others, single steps included


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_exported_qrnn_equals_eager_for_any_length_and_batch(
    bidirectional: bool, with_h0: bool, batch_first: bool
) -> None:
    qrnn = QRNN(
        4, 5, num_layers=2, window=2, bidirectional=bidirectional, batch_first=batch_first, zoneout=0.25
    ).eval()
    states = 2 * (2 if bidirectional else 1)

    def inputs(steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.randn(batch, steps, 4) if batch_first else torch.randn(steps, batch, 4)
        return x, torch.randn(states, batch, 5) if with_h0 else None

    program = export_program(qrnn, inputs(*SHAPES[0]))
    # evaluation mode: zoneout is a scale on f, not a random mask
    assert not any("bernoulli" in str(node.target) for node in program.graph.nodes)
    for steps, batch in SHAPES:
        x, h0 = inputs(steps, batch)
        with torch.no_grad():
            got, expected = program.module()(x, h0), qrnn(x, h0)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)


def test_layer_exports_and_the_program_saves_and_loads(tmp_path: pathlib.Path) -> None:
    layer = QRNNLayer(3, 4, window=3, backward=True, input_gate=True).eval()
    x, hidden = torch.randn(5, 2, 3), torch.randn(1, 2, 4)
    program = export_program(layer, (x, hidden))
    torch.export.save(program, tmp_path / "layer.pt2")
    loaded = torch.export.load(tmp_path / "layer.pt2")  # torchqrnn's ops are registered: it is imported
    x, hidden = torch.randn(8, 3, 3), torch.randn(1, 3, 4)
    with torch.no_grad():
        for got, expected in zip(loaded.module()(x, hidden), layer(x, hidden), strict=True):
            torch.testing.assert_close(got, expected)


def test_streaming_program_steps_equal_the_whole_sequence() -> None:
    qrnn = QRNN(3, 4, num_layers=3, window=[3, 1, 2]).eval()
    streamer = StreamingQRNN(qrnn)
    program = export_program(streamer, (torch.randn(4, 2, 3), *streamer.initial_state(2)))
    x = torch.randn(10, 3, 3)
    with torch.no_grad():
        whole, h_whole = qrnn(x)
        state = streamer.initial_state(3)
        outputs = []
        for chunk in [x[:1], x[1:2], x[2:7], x[7:]]:  # single steps and chunks, one program
            output, *state = program.module()(chunk, *state)
            outputs.append(output)
    torch.testing.assert_close(torch.cat(outputs), whole)
    torch.testing.assert_close(state[0], h_whole)
    assert [tuple(c.shape) for c in state[1:]] == [(2, 3, 3), (0, 3, 4), (1, 3, 4)]


def test_dynamic_shapes_follow_each_layout() -> None:
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1], batch_first=True)
    streamer = StreamingQRNN(qrnn)
    x = torch.randn(2, 5, 3)
    assert dynamic_shapes(qrnn, (x, None)) == ({0: "batch", 1: "time"}, None)
    assert dynamic_shapes(streamer, (x, *streamer.initial_state(2))) == (
        {0: "batch", 1: "time"},
        {1: "batch"},
        ({1: "batch"}, {1: "batch"}),
    )
    assert dynamic_shapes(QRNNLayer(3, 4), (x.transpose(0, 1), torch.zeros(2, 4))) == (
        {0: "time", 1: "batch"},
        {0: "batch"},
    )
    with pytest.raises(TypeError, match="expected a QRNN, QRNNLayer or StreamingQRNN, got Linear"):
        dynamic_shapes(torch.nn.Linear(3, 4), x)


def test_an_example_of_size_one_is_refused_with_the_reason() -> None:
    qrnn = QRNN(3, 4).eval()
    message = r"at least 2 steps and a batch of at least 2, got \(T, B, I\) = \(1, 4, 3\)"
    with pytest.raises(ValueError, match=message):
        export_program(qrnn, torch.randn(1, 4, 3))
    program = export_program(qrnn, torch.randn(1, 4, 3), dynamic=False)  # static shapes: any example
    x = torch.randn(1, 4, 3)
    torch.testing.assert_close(program.module()(x)[0], qrnn(x)[0])
