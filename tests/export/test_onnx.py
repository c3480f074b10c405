"""ONNX export: each recurrence is one ONNX Scan; onnxruntime matches PyTorch for any length and batch."""

from __future__ import annotations

import collections
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

import torchqrnn.export
from torchqrnn import QRNN, StreamingQRNN, forget_mult, qrnn_pool
from torchqrnn.export import DEFAULT_OPSET, onnx_translation_table, to_onnx

ATOL = 1e-5  # the bar: onnxruntime within 1e-5 of PyTorch
SHAPES = [(6, 3), (1, 1), (13, 2), (2, 5), (40, 4)]  # (T, B): the example's, then others


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def op_counts(model: onnx.ModelProto) -> tuple[collections.Counter[str], list[collections.Counter[str]]]:
    """The main graph's op counts, and those of each subgraph (the Scan bodies)."""
    bodies = [
        collections.Counter(inner.op_type for inner in attribute.g.node)
        for node in model.graph.node
        for attribute in node.attribute
        if attribute.type == onnx.AttributeProto.GRAPH
    ]
    return collections.Counter(node.op_type for node in model.graph.node), bodies


def assert_matches(got: list[np.ndarray], expected: tuple[Tensor, ...] | list[Tensor]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == tuple(e.shape)
        np.testing.assert_allclose(g, e.detach().numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_qrnn_runs_in_onnxruntime_for_any_length_and_batch(bidirectional: bool, with_h0: bool) -> None:
    """Window 2, two layers, both directions, with and without h0, zoneout scaling f (evaluation)."""
    qrnn = QRNN(4, 5, num_layers=2, window=2, bidirectional=bidirectional, zoneout=0.2).eval()
    states = 2 * (2 if bidirectional else 1)
    x = torch.randn(6, 3, 4)
    h0 = torch.randn(states, 3, 5) if with_h0 else None
    model = to_onnx(qrnn, (x, h0)).model_proto
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == (["input", "h0"] if with_h0 else ["input"])
    assert [o.name for o in model.graph.output] == ["output", "h_n"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["time", "batch", 4]
    assert {entry.domain: entry.version for entry in model.opset_import}[""] == DEFAULT_OPSET
    counts, bodies = op_counts(model)
    assert counts["Scan"] == 2 * (2 if bidirectional else 1)  # one per layer and direction, not per step
    assert bodies == [collections.Counter({"Mul": 1, "Add": 1, "Identity": 1})] * counts["Scan"]
    run = session(model)
    for steps, batch in SHAPES:
        x = torch.randn(steps, batch, 4)
        h0 = torch.randn(states, batch, 5) if with_h0 else None
        feeds = {"input": x.numpy()} | ({"h0": h0.numpy()} if h0 is not None else {})
        with torch.no_grad():
            assert_matches(run.run(None, feeds), qrnn(x, h0))


def test_the_graph_does_not_grow_with_the_example_length(tmp_path: pathlib.Path) -> None:
    """Same graph from a 2-step and a 30-step example: the recurrence is a loop, not unrolled steps. The
    model is saved to a file and loaded from it."""
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1], batch_first=True).eval()
    short = to_onnx(qrnn, torch.randn(2, 2, 3), tmp_path / "short.onnx")
    long = to_onnx(qrnn, torch.randn(2, 30, 3))
    assert op_counts(short.model_proto) == op_counts(long.model_proto)
    loaded = onnx.load(tmp_path / "short.onnx")
    x = torch.randn(3, 17, 3)  # (B, T, I): batch first
    with torch.no_grad():
        assert_matches(session(loaded).run(None, {"input": x.numpy()}), qrnn(x))


class PoolVariants(nn.Module):
    """qrnn_pool with every option, and forget_mult, side by side: one export covers every translation."""

    def forward(self, gates: Tensor, h0: Tensor, mask: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        hidden = h0.shape[-1]
        fo, f_only, ifo = gates[..., : 3 * hidden], gates[..., : 2 * hidden], gates
        batch_major = fo.transpose(0, 1)
        results = [
            *qrnn_pool(fo, h0),
            *qrnn_pool(f_only, None, output_gate=False, reverse=True, forget_scale=0.7),
            *qrnn_pool(ifo, h0, input_gate=True, reverse=True, lengths=lengths),
            *qrnn_pool(
                batch_major, None, batch_first=True, lengths=lengths, forget_mask=mask.transpose(0, 1)
            ),
            *qrnn_pool(f_only, h0, output_gate=False, forget_mask=mask, reverse=True),
        ]
        f, x = torch.sigmoid(gates[..., :hidden]), torch.tanh(gates[..., hidden : 2 * hidden])
        results.append(forget_mult(f, x, h0))
        results.append(
            forget_mult(f.transpose(0, 1), x.transpose(0, 1), None, batch_first=True, reverse=True)
        )
        return tuple(results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_option_of_the_ops_translates(dtype: torch.dtype) -> None:
    """Output and input gates, reverse, batch_first, h0 or none, forget_scale, zoneout masks, lengths."""
    module = PoolVariants().eval()

    def inputs(steps: int, batch: int) -> tuple[Tensor, ...]:
        gates = torch.randn(steps, batch, 4 * 3, dtype=dtype)
        mask = torch.rand(steps, batch, 3) > 0.3
        lengths = torch.randint(0, steps + 1, (batch,))
        lengths[0] = steps  # the longest sequence fills the tensor, as a padded batch does
        return gates, torch.randn(batch, 3, dtype=dtype), mask, lengths

    dynamic = ({0: "time", 1: "batch"}, {0: "batch"}, {0: "time", 1: "batch"}, {0: "batch"})
    program = to_onnx(module, inputs(5, 3), dynamic_shapes=dynamic)
    counts, _ = op_counts(program.model_proto)
    assert counts["Scan"] == 7
    run = session(program.model_proto)
    names = [i.name for i in program.model_proto.graph.input]
    for steps, batch in SHAPES:
        arguments = inputs(steps, batch)
        got = run.run(None, {name: t.numpy() for name, t in zip(names, arguments, strict=True)})
        # outputs the optimiser found unused (the op's third result) are not graph outputs
        assert_matches(got, module(*arguments))


def test_half_precision_computes_in_float32() -> None:
    module = PoolVariants().eval()
    gates, h0 = torch.randn(5, 3, 12, dtype=torch.float16), torch.randn(3, 3, dtype=torch.float16)
    mask, lengths = torch.rand(5, 3, 3) > 0.3, torch.tensor([5, 2, 4])
    program = to_onnx(module, (gates, h0, mask, lengths), dynamic=False)
    names = [i.name for i in program.model_proto.graph.input]
    got = session(program.model_proto).run(
        None, {name: t.numpy() for name, t in zip(names, (gates, h0, mask, lengths), strict=True)}
    )
    expected = module(gates, h0, mask, lengths)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float32), e.float().numpy(), rtol=0, atol=2e-3)


@pytest.mark.parametrize("batch_first", [False, True])
def test_streaming_graph_step_by_step_equals_the_whole_sequence(batch_first: bool) -> None:
    """Context in, context out: one exported graph run one step (and one chunk) at a time in onnxruntime."""
    qrnn = QRNN(3, 4, num_layers=3, window=[3, 1, 2], batch_first=batch_first).eval()
    streamer = StreamingQRNN(qrnn)
    example = torch.randn(2, 4, 3) if batch_first else torch.randn(4, 2, 3)
    model = to_onnx(streamer, (example, *streamer.initial_state(2))).model_proto
    names = [i.name for i in model.graph.input]
    assert names == ["input", "h0", "context_0", "context_1", "context_2"]
    assert [o.name for o in model.graph.output] == [
        "output", "h_n", "next_context_0", "next_context_1", "next_context_2"
    ]  # fmt: skip
    run = session(model)
    x = torch.randn(11, 3, 3)  # (T, B, I)
    with torch.no_grad():
        whole, h_whole = qrnn(x.transpose(0, 1) if batch_first else x)
    state = [t.numpy() for t in streamer.initial_state(3)]
    outputs = []
    for start, stop in [(0, 1), (1, 2), (2, 3), (3, 8), (8, 9), (9, 11)]:
        chunk = x[start:stop].transpose(0, 1) if batch_first else x[start:stop]
        output, *state = run.run(None, dict(zip(names, [chunk.numpy(), *state], strict=True)))
        outputs.append(output)
    np.testing.assert_allclose(np.concatenate(outputs, 1 if batch_first else 0), whole, rtol=0, atol=ATOL)
    np.testing.assert_allclose(state[0], h_whole, rtol=0, atol=ATOL)
    np.testing.assert_allclose(state[1], x[-2:].numpy())  # layer 0's context: its last two inputs


def test_missing_onnxscript_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.delitem(sys.modules, "torchqrnn.export.onnx_ops", raising=False)
    monkeypatch.delattr(torchqrnn.export, "onnx_ops", raising=False)
    with pytest.raises(ImportError, match=r"pip install onnx onnxscript"):
        onnx_translation_table()


def test_import_loads_no_onnx_package() -> None:
    code = (
        "import sys, torchqrnn, torchqrnn.export\n"
        "loaded = [m for m in ('onnx', 'onnxscript', 'onnxruntime', 'onnx_ir') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
