"""Plain ``torch.onnx.export``, as an ``nn.GRU`` user writes it: no torchqrnn helper, any T and B after.

The ops reach ONNX through their scan forms (``ops/*/scan.py``), registered as their decompositions;
``torch.export`` and ``torch.compile`` keep the ops and their kernels; the TorchScript-based exporter
(``dynamo=False``) raises, naming the exporter that works.
"""

from __future__ import annotations

import collections
import io
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from torchqrnn import QRNN, QRNNLayer, StreamingQRNN
from torchqrnn.export import dynamic_shapes, export_program
from torchqrnn.ops.forget_mult import forget_mult_reference
from torchqrnn.ops.forget_mult.scan import forget_mult_scan
from torchqrnn.ops.qrnn_pool import qrnn_pool_reference
from torchqrnn.ops.qrnn_pool.scan import qrnn_pool_scan

from .test_onnx import ATOL, PoolVariants, assert_matches, op_counts, session

SHAPES = [(6, 3), (1, 1), (13, 2), (2, 5), (40, 4)]  # (T, B): the example's, then others
OPS = (torch.ops.torchqrnn.qrnn_pool.default, torch.ops.torchqrnn.forget_mult.default)


def gru_style_export(
    model: nn.Module, args: tuple[Tensor, ...], path: pathlib.Path, names: list[str], axes: dict
) -> onnx.ModelProto:
    """What an nn.GRU user writes: a file, named inputs and outputs, ``dynamic_axes``, torch's default
    exporter. Returns the model loaded from the file."""
    outputs = ["output", "h_n"]
    torch.onnx.export(model, args, path, input_names=names, output_names=outputs, dynamic_axes=axes)
    return onnx.load(path)


def data_axes(batch_first: bool) -> dict[int, str]:
    return {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}


def assert_runs_like_eager(
    model: onnx.ModelProto, module: nn.Module, inputs: Callable[[int, int], tuple[Tensor, ...]]
) -> None:
    """onnxruntime equals eager at every (T, B) of SHAPES, the example's and others."""
    run = session(model)
    names = [i.name for i in model.graph.input]
    for steps, batch in SHAPES:
        arguments = inputs(steps, batch)
        with torch.no_grad():
            expected = module(*arguments)
        assert_matches(run.run(None, dict(zip(names, (t.numpy() for t in arguments), strict=True))), expected)


@pytest.mark.parametrize(
    ("bidirectional", "batch_first", "with_h0"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, False)],
)
def test_qrnn_exports_with_dynamic_axes_and_runs_any_length_and_batch(
    bidirectional: bool, batch_first: bool, with_h0: bool, tmp_path: pathlib.Path
) -> None:
    """Layer 0 has window 2 and layer 1 window 1; zoneout scales f (evaluation)."""
    qrnn = QRNN(
        4, 5, num_layers=2, window=[2, 1], bidirectional=bidirectional, batch_first=batch_first, zoneout=0.2
    ).eval()
    states = 2 * (2 if bidirectional else 1)

    def inputs(steps: int, batch: int) -> tuple[Tensor, ...]:
        x = torch.randn(batch, steps, 4) if batch_first else torch.randn(steps, batch, 4)
        return (x, torch.randn(states, batch, 5)) if with_h0 else (x,)

    names = ["input", "h0"] if with_h0 else ["input"]
    axes = {"input": data_axes(batch_first), "h0": {1: "batch"}, "output": data_axes(batch_first)}
    axes = {k: axes[k] for k in [*names, "output"]}
    model = gru_style_export(qrnn, inputs(*SHAPES[0]), tmp_path / "qrnn.onnx", names, axes)
    onnx.checker.check_model(model, full_check=True)
    counts, bodies = op_counts(model)
    assert counts["Scan"] == 2 * (2 if bidirectional else 1)  # one per layer and direction, not per step
    assert bodies == [collections.Counter({"Mul": 1, "Add": 1, "Identity": 1})] * counts["Scan"]
    assert_runs_like_eager(model, qrnn, inputs)


def test_the_plain_graph_does_not_grow_with_the_example_length() -> None:
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1]).eval()
    shapes = ({0: "time", 1: "batch"},)
    short, long = (
        torch.onnx.export(qrnn, (torch.randn(steps, 2, 3),), dynamic_shapes=shapes, verbose=False)
        for steps in (2, 30)
    )
    assert short is not None and long is not None
    assert op_counts(short.model_proto) == op_counts(long.model_proto)


@pytest.mark.parametrize(
    "options",
    [
        {"window": 2, "save_prev_x": False},
        {"window": 3, "backward": True, "batch_first": True},
        {"window": 1, "output_gate": False, "input_gate": True},
    ],
)
def test_qrnn_layer_exports_with_dynamic_shapes(options: dict[str, Any]) -> None:
    """f-, fo- and ifo-pooling, forward and backward (look-ahead window), hidden given, batch first."""
    layer = QRNNLayer(3, 5, **options).eval()
    batch_first = options.get("batch_first", False)

    def inputs(steps: int, batch: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(batch, steps, 3) if batch_first else torch.randn(steps, batch, 3)
        return x, torch.randn(1, batch, 5)

    program = torch.onnx.export(
        layer, inputs(*SHAPES[0]), dynamic_shapes=dynamic_shapes(layer, inputs(*SHAPES[0])), verbose=False
    )
    assert program is not None
    assert_runs_like_eager(program.model_proto, layer, inputs)


def test_streaming_qrnn_exports_with_dynamic_shapes_and_streams() -> None:
    """One graph, fed its own states back, one step and one chunk at a time, equals the whole sequence.
    (``dynamic_axes`` cannot name the contexts: torch maps its names onto ``forward``'s parameters, and
    ``*contexts`` is one; ``dynamic_shapes`` takes them as one tuple.)"""
    qrnn = QRNN(3, 4, num_layers=3, window=[3, 1, 2]).eval()
    streamer = StreamingQRNN(qrnn)
    names = ["input", "h0", "context_0", "context_1", "context_2"]
    shapes = ({0: "time", 1: "batch"}, {1: "batch"}, ({1: "batch"},) * 3)
    program = torch.onnx.export(
        streamer,
        (torch.randn(4, 2, 3), *streamer.initial_state(2)),
        input_names=names,
        output_names=["output", "h_n", "next_context_0", "next_context_1", "next_context_2"],
        dynamic_shapes=shapes,
        verbose=False,
    )
    assert program is not None
    run = session(program.model_proto)
    x = torch.randn(11, 3, 3)
    with torch.no_grad():
        whole, h_whole = qrnn(x)
    state = [t.numpy() for t in streamer.initial_state(3)]
    outputs = []
    for start, stop in [(0, 1), (1, 2), (2, 7), (7, 8), (8, 11)]:
        output, *state = run.run(None, dict(zip(names, [x[start:stop].numpy(), *state], strict=True)))
        outputs.append(output)
    np.testing.assert_allclose(np.concatenate(outputs), whole, rtol=0, atol=ATOL)
    np.testing.assert_allclose(state[0], h_whole, rtol=0, atol=ATOL)


def test_a_one_step_streaming_graph_with_static_shapes_streams() -> None:
    """The deployment graph of a step-by-step decoder: fixed shapes, one step in, states in and out."""
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1]).eval()
    streamer = StreamingQRNN(qrnn)
    program = torch.onnx.export(streamer, (torch.randn(1, 2, 3), *streamer.initial_state(2)), verbose=False)
    assert program is not None
    run = session(program.model_proto)
    names = [i.name for i in program.model_proto.graph.input]
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        whole, h_whole = qrnn(x)
    state = [t.numpy() for t in streamer.initial_state(2)]
    outputs = []
    for step in range(6):
        output, *state = run.run(None, dict(zip(names, [x[step : step + 1].numpy(), *state], strict=True)))
        outputs.append(output)
    np.testing.assert_allclose(np.concatenate(outputs), whole, rtol=0, atol=ATOL)
    np.testing.assert_allclose(state[0], h_whole, rtol=0, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_option_of_the_ops_exports_plainly(dtype: torch.dtype) -> None:
    """Both ops with output and input gates, reverse, batch_first, h0 or none, forget_scale, zoneout masks
    and lengths, through their registered decompositions (no custom_translation_table)."""
    module = PoolVariants().eval()

    def inputs(steps: int, batch: int) -> tuple[Tensor, ...]:
        gates = torch.randn(steps, batch, 4 * 3, dtype=dtype)
        mask = torch.rand(steps, batch, 3) > 0.3
        lengths = torch.randint(0, steps + 1, (batch,))
        lengths[0] = steps
        return gates, torch.randn(batch, 3, dtype=dtype), mask, lengths

    dynamic = ({0: "time", 1: "batch"}, {0: "batch"}, {0: "time", 1: "batch"}, {0: "batch"})
    program = torch.onnx.export(module, inputs(5, 3), dynamic_shapes=dynamic, verbose=False)
    assert program is not None
    assert op_counts(program.model_proto)[0]["Scan"] == 7
    run = session(program.model_proto)
    names = [i.name for i in program.model_proto.graph.input]
    for steps, batch in SHAPES:
        arguments = inputs(steps, batch)
        got = run.run(None, {name: t.numpy() for name, t in zip(names, arguments, strict=True)})
        expected = module(*arguments)
        if dtype == torch.float32:
            assert_matches(got, expected)
            continue
        for g, e in zip(got, expected, strict=True):  # float16 in and out, float32 inside, as the kernels
            assert g.dtype == np.float16
            np.testing.assert_allclose(g.astype(np.float32), e.float().numpy(), rtol=0, atol=2e-3)


def test_a_torch_export_program_keeps_the_kernels_and_exports_to_onnx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch.export (and torch.compile, dynamic) trace the ops through their fake implementations: the
    program holds the ops, and the scan forms run only when torch.onnx.export decomposes them."""
    used: list[Any] = []
    for op in OPS:
        decomposition = torch._decomp.decomposition_table[op]
        spy: Callable[..., Any] = lambda *args, _d=decomposition, _op=op: used.append(_op) or _d(*args)
        monkeypatch.setitem(torch._decomp.decomposition_table, op, spy)
    qrnn = QRNN(4, 5, num_layers=2, window=2, bidirectional=True).eval()
    x = torch.randn(6, 3, 4)
    program = export_program(qrnn, x)
    targets = collections.Counter(node.target for node in program.graph.nodes)
    assert targets[torch.ops.torchqrnn.qrnn_pool.default] == 4
    compiled = torch.compile(qrnn, dynamic=True, backend="eager")
    with torch.no_grad():
        compiled(x), compiled(torch.randn(9, 2, 4))
    assert used == []

    onnx_program = torch.onnx.export(program, verbose=False)  # the program itself, decomposed for ONNX
    assert onnx_program is not None
    assert used == [torch.ops.torchqrnn.qrnn_pool.default] * 4
    run = session(onnx_program.model_proto)
    for steps, batch in SHAPES:
        x = torch.randn(steps, batch, 4)
        with torch.no_grad():
            assert_matches(run.run(None, {run.get_inputs()[0].name: x.numpy()}), qrnn(x))


# ---------------------------------------------------------------------------------------------------------
# The scan forms themselves, run eagerly, against the references.


@pytest.mark.parametrize("steps", [0, 1, 7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize(("batch_first", "reverse", "with_h0"), [(False, False, True), (True, True, False)])
def test_forget_mult_scan_equals_the_reference(
    steps: int, dtype: torch.dtype, batch_first: bool, reverse: bool, with_h0: bool
) -> None:
    shape = (3, steps, 5) if batch_first else (steps, 3, 5)
    f, x = torch.rand(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    h0 = torch.randn(3, 5, dtype=dtype) if with_h0 else None
    got = forget_mult_scan(f, x, h0, batch_first, reverse, "cpu")
    expected = forget_mult_reference(f, x, h0, batch_first=batch_first, reverse=reverse)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3 if dtype == torch.float16 else 1e-12)


@pytest.mark.parametrize("steps", [0, 1, 7])
@pytest.mark.parametrize(
    "options",
    [
        {"output_gate": True, "input_gate": False},
        {"output_gate": False, "input_gate": True, "reverse": True, "forget_scale": 0.6},
        {"output_gate": True, "input_gate": True, "batch_first": True, "lengths": True, "mask": True},
        {"output_gate": False, "input_gate": False, "reverse": True, "lengths": True, "h0": False},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_qrnn_pool_scan_equals_the_reference(steps: int, options: dict[str, Any], dtype: torch.dtype) -> None:
    output_gate, input_gate = options["output_gate"], options["input_gate"]
    batch_first, reverse = options.get("batch_first", False), options.get("reverse", False)
    batch, hidden = 4, 3
    layout = (batch, steps) if batch_first else (steps, batch)
    gates = torch.randn(*layout, (2 + output_gate + input_gate) * hidden, dtype=dtype)
    h0 = torch.randn(batch, hidden, dtype=dtype) if options.get("h0", True) else None
    mask = torch.rand(*layout, hidden) > 0.3 if options.get("mask") else None
    lengths = torch.tensor([steps, 0, steps // 2, max(steps - 1, 0)]) if options.get("lengths") else None
    scale = options.get("forget_scale", 1.0)
    out, c_n, cells = qrnn_pool_scan(
        gates, h0, mask, scale, lengths, output_gate, input_gate, batch_first, reverse, "cpu"
    )
    expected = qrnn_pool_reference(
        gates, h0, output_gate=output_gate, input_gate=input_gate, forget_mask=mask, forget_scale=scale,
        lengths=lengths, batch_first=batch_first, reverse=reverse,
    )  # fmt: skip
    tolerance = {"rtol": 0, "atol": 1e-2 if dtype == torch.bfloat16 else 1e-12}
    torch.testing.assert_close(out, expected[0], **tolerance)
    torch.testing.assert_close(c_n, expected[1], **tolerance)
    assert cells.shape == (out.shape if output_gate else (0,))  # the op's third result: its saved cells


# ---------------------------------------------------------------------------------------------------------
# The TorchScript-based exporter records a trace, which cannot hold a kernel or a loop.


@pytest.mark.parametrize("grad", [True, False])
def test_the_legacy_exporter_says_which_exporter_works(grad: bool) -> None:
    qrnn = QRNN(4, 5, num_layers=2, window=2).eval()
    streamer = StreamingQRNN(qrnn)
    with torch.set_grad_enabled(grad):
        for model, args in [
            (qrnn, (torch.randn(6, 3, 4),)),
            (streamer, (torch.randn(1, 3, 4), *streamer.initial_state(3))),
        ]:
            with pytest.raises(RuntimeError, match=r"dynamo=False.*dynamo=True.*torchqrnn\.export\.to_onnx"):
                torch.onnx.export(model, args, io.BytesIO(), dynamo=False)


def test_jit_trace_says_what_works() -> None:
    qrnn = QRNN(4, 5).eval()
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace cannot record .*'cpu' kernels.*torch\.export"):
        torch.jit.trace(qrnn, (torch.randn(6, 3, 4),))
    traced = torch.jit.trace(QRNN(4, 5, backend="reference").eval(), (torch.randn(6, 3, 4),))
    assert traced is not None  # the reference loop traces, unrolled, as the message says
