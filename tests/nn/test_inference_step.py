"""The single-step inference path (streaming under no_grad): equal to the generic path, and actually taken."""

from __future__ import annotations

import pytest
import torch

from torchqrnn import QRNN, QRNNLayer
from torchqrnn.nn import layer as layer_module
from torchqrnn.nn.streaming import StreamingQRNN

F64 = torch.float64


@pytest.fixture
def generic_path_forbidden(monkeypatch: pytest.MonkeyPatch):
    """Fail if a layer call falls back to the generic path, a projection then the pooling (which a valid
    single step must not need). Validation is shared by both paths, so it still runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("the single-step path was not taken")

    monkeypatch.setattr(layer_module, "qrnn_pool", refuse)
    monkeypatch.setattr(QRNNLayer, "_project", refuse)


def steps_of(layer: QRNNLayer, x: torch.Tensor, stream: bool, h0: torch.Tensor | None):
    """Feed ``x`` one step at a time (from the end for a backward layer); outputs in time order."""
    time_dim = 1 if layer.batch_first and x.dim() == 3 else 0
    order = range(x.shape[time_dim] - 1, -1, -1) if layer.backward else range(x.shape[time_dim])
    outputs, h, context = {}, h0, None
    for t in order:
        step = x.narrow(time_dim, t, 1)
        if stream:
            outputs[t], h, context = layer.forward_stream(step, h, context)
        else:
            outputs[t], h = layer(step, h)
    return torch.cat([outputs[t] for t in sorted(outputs)], time_dim), h


@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(("output_gate", "input_gate"), [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("batch", [1, 3])  # batch 1: the stack kernel (BLAS inside); 3: product, then gates
def test_steps_equal_the_whole_sequence(window, backward, output_gate, input_gate, stream, batch) -> None:
    layer = QRNNLayer(
        5, 7, window=window, backward=backward, output_gate=output_gate, input_gate=input_gate,
        save_prev_x=not stream, zoneout=0.2, dtype=F64,
    ).eval()  # fmt: skip
    x, h0 = torch.randn(6, batch, 5, dtype=F64), torch.randn(batch, 7, dtype=F64)
    with torch.no_grad():
        whole, h_whole = layer(x, h0)
        layer.reset()
        steps, h = steps_of(layer, x, stream, h0)
    torch.testing.assert_close(steps, whole)
    torch.testing.assert_close(h, h_whole)


@pytest.mark.usefixtures("generic_path_forbidden")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_single_step_path_is_taken(dtype: torch.dtype) -> None:
    layer = QRNNLayer(4, 6, window=2, save_prev_x=True, dtype=dtype).eval()
    with torch.no_grad():
        out, h = layer(torch.randn(1, 2, 4, dtype=dtype))
        out, h = layer(torch.randn(1, 2, 4, dtype=dtype), h)  # h as the layer returns it: (1, B, H)
        out, h = layer(torch.randn(1, 2, 4, dtype=dtype), h[0])  # and as (B, H)
    assert out.shape == (1, 2, 6) and h.shape == (1, 2, 6) and layer.prev_x.shape == (1, 2, 4)


def test_batch_first_and_unbatched_steps() -> None:
    time_major = QRNNLayer(4, 6, window=2, dtype=F64)
    batch_first = QRNNLayer(4, 6, window=2, batch_first=True, dtype=F64)
    batch_first.load_state_dict(time_major.state_dict())
    x = torch.randn(5, 2, 4, dtype=F64)
    with torch.no_grad():
        whole, h_whole = time_major(x)
        steps, h = steps_of(batch_first, x.transpose(0, 1).contiguous(), True, None)
        torch.testing.assert_close(steps, whole.transpose(0, 1))
        torch.testing.assert_close(h, h_whole)
        single, h_single = steps_of(time_major, x[:, 1], True, None)  # unbatched (T, I), one step at a time
        torch.testing.assert_close(single, whole[:, 1])
        assert h_single.shape == (1, 6)
        torch.testing.assert_close(h_single[0], h_whole[0, 1])


def test_invalid_steps_still_raise_the_generic_errors() -> None:
    layer = QRNNLayer(4, 6, window=2, save_prev_x=True).eval()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"input\.size\(-1\) must be equal to input_size"):
            layer(torch.randn(1, 2, 3))
        with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 6\)"):
            layer(torch.randn(1, 2, 4), torch.randn(3, 6))
        layer(torch.randn(1, 2, 4))
        with pytest.raises(RuntimeError, match=r"call reset\(\)"):
            layer(torch.randn(1, 5, 4))


def test_a_qrnn_stack_streams_step_by_step() -> None:
    qrnn = QRNN(4, 6, num_layers=2, window=[2, 1], save_prev_x=True, dtype=F64).eval()
    x = torch.randn(7, 2, 4, dtype=F64)
    with torch.no_grad():
        whole, h_whole = qrnn(x)
        qrnn.reset()
        outputs, h = [], None
        for step in x.split(1):
            out, h = qrnn(step, h)
            outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs), whole)
    torch.testing.assert_close(h, h_whole)


def test_a_hidden_state_the_generic_path_refuses_is_refused_here_too() -> None:
    layer = QRNNLayer(4, 6).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 6\) or \(1, 2, 6\)"):
        layer(torch.randn(1, 2, 4), torch.randn(2, 1, 6))  # B * H values, but shaped (B, 1, H)


def _stack_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the one-call stack step (batch 1), wherever it is reached from."""
    from torchqrnn.ops.qrnn_step import cpu as step_kernels

    calls: list[int] = []
    original = step_kernels.stack_step

    def counted(plan, *args):
        calls.append(len(plan.plan))
        return original(plan, *args)

    monkeypatch.setattr(step_kernels, "stack_step", counted)
    return calls


@pytest.mark.parametrize("windows", [[1], [2, 1], [3, 2, 1], [1, 3]])
@pytest.mark.parametrize(("output_gate", "input_gate"), [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_a_batch_1_stack_step_is_one_call_and_equals_the_layer_loop(
    monkeypatch, windows, output_gate, input_gate, with_h0, dtype
) -> None:
    """QRNN steps of batch 1 run every layer in one kernel call; a hook on a layer (which must run) puts
    them back on the layer loop; both give the same values, states and contexts."""
    qrnn = QRNN(
        5, 7, num_layers=len(windows), window=windows, output_gate=output_gate, input_gate=input_gate,
        zoneout=0.25, dtype=dtype,
    ).eval()  # fmt: skip
    stream = StreamingQRNN(qrnn)
    x = torch.randn(6, 1, 5, dtype=dtype)
    calls = _stack_kernel_calls(monkeypatch)
    with torch.no_grad():
        state = list(stream.initial_state(1))
        if with_h0:
            state[0] = torch.randn_like(state[0])
        start = list(state)
        fast = []
        for t in range(6):
            out, *state = stream(x[t : t + 1], *state)
            fast.append((out, *state))
        assert calls == [len(windows)] * 6
        seen: list[int] = []
        qrnn.layers[-1].register_forward_hook(lambda module, args, result: seen.append(1))
        state = start
        for t in range(6):
            out, *state = stream(x[t : t + 1], *state)
            for got, expected in zip((out, *state), fast[t], strict=True):
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # the hooked stack took the layer loop: each layer's own batch-1 step, one layer a call
    assert calls == [len(windows)] * 6 + [1] * (6 * len(windows)) and len(seen) == 6


def test_stack_step_sees_weights_changed_in_place_and_replaced(monkeypatch) -> None:
    """The step plan views the weights: in-place changes (through .data too) are read, and new storage
    (load_state_dict with assign, .data = ...) makes a new plan."""
    qrnn = QRNN(4, 6, num_layers=2, window=[2, 1]).eval()
    x = torch.randn(1, 1, 4)
    calls = _stack_kernel_calls(monkeypatch)
    with torch.no_grad():
        qrnn(x)
        qrnn.layers[0].linear.weight.data.mul_(0.5)
        halved = qrnn(x)[0]
        qrnn.layers[1].linear.weight.data = torch.randn(18, 6)
        replaced = qrnn(x)[0]
        for layer in qrnn.layers:
            layer.backend = "reference"  # (the layer loop, F.linear and the plain pooling)
        torch.testing.assert_close(replaced, qrnn(x)[0])
    assert len(calls) == 3 and not torch.equal(halved, replaced)


@pytest.mark.parametrize(
    ("output_gate", "input_gate"), [(True, False), (False, False), (True, True), (False, True)]
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("batch_first", [False, True])
def test_the_pooling_of_one_step_is_the_pooling_op_bit_for_bit(output_gate, input_gate, dtype, batch_first):
    """After a projection called as its module (quantized, hooked, patched), a single step is pooled by the
    step's gates kernel, which must give exactly the pooling op's bits."""
    from torchqrnn.ops.qrnn_pool import qrnn_pool
    from torchqrnn.ops.qrnn_step import pool_step

    count = 2 + output_gate + input_gate
    for batch in (1, 3):
        gates = (
            3 * torch.randn(batch, 1, count * 9, dtype=dtype)
            if batch_first
            else 3 * torch.randn(1, batch, count * 9, dtype=dtype)
        )
        for h0 in (torch.randn(batch, 9, dtype=dtype), None):
            options = dict(output_gate=output_gate, input_gate=input_gate)
            got = pool_step(gates, h0, output_gate, input_gate, 0.75)
            expected = qrnn_pool(gates, h0, forget_scale=0.75, batch_first=batch_first, **options)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_a_quantized_layer_steps_through_its_module_then_the_step_pooling(monkeypatch) -> None:
    """Dynamic int8 quantizes each call's activations with their own scale, so steps are compared with
    steps: the step pooling against the plain reference pooling after the same quantized products."""
    qrnn = QRNN(8, 12, num_layers=2, window=[2, 1]).eval()
    quantized = torch.ao.quantization.quantize_dynamic(qrnn, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(5, 1, 8)

    def steps() -> tuple[torch.Tensor, torch.Tensor]:
        outputs, h = [], None
        with torch.no_grad():
            for t in range(5):
                out, h = quantized(x[t : t + 1], h)
                outputs.append(out)
        return torch.cat(outputs), h

    monkeypatch.setattr(layer_module, "qrnn_pool", lambda *a, **k: pytest.fail("the pooling op was called"))
    fast, h_fast = steps()
    monkeypatch.undo()
    for layer in quantized.layers:
        layer.backend = "reference"
    slow, h_slow = steps()
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_fast, h_slow, rtol=1e-6, atol=1e-6)


def test_a_transposed_weight_is_read_afresh_each_step() -> None:
    """A weight stored transposed (not contiguous) is viewed through a copy: each step must copy again, so
    that changes to the weight between steps are seen."""
    layer = QRNNLayer(4, 6).eval()
    layer.linear.weight = torch.nn.Parameter(torch.randn(4, 18).t())  # (18, 4), column-major
    x = torch.randn(1, 1, 4)
    with torch.no_grad():
        first = layer(x)[0]
        layer.linear.weight.mul_(-1)
        second = layer(x)[0]
        layer.backend = "reference"
        expected = layer(x)[0]
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_half_precision_model_streams_as_it_runs_whole(dtype: torch.dtype, batch: int) -> None:
    """A model converted to bfloat16 / float16 steps through the step kernels (batch 1, bfloat16: MKL's
    bfloat16 product with float32 sums, float32 gates) and gives its own whole-sequence output within the
    format's rounding, and the float32 model's within a few of its ulps."""
    qrnn = QRNN(16, 24, num_layers=2, window=[2, 1]).eval()
    half = QRNN(16, 24, num_layers=2, window=[2, 1]).eval()
    half.load_state_dict(qrnn.state_dict())
    half = half.to(dtype)
    x = torch.randn(9, batch, 16)
    with torch.no_grad():
        whole = half(x.to(dtype))[0].float()
        reference = qrnn(x)[0]
        outputs, h, contexts = [], None, None
        for t in range(9):
            out, h, contexts = half.forward_stream(x[t : t + 1].to(dtype), h, contexts)
            outputs.append(out)
    steps = torch.cat(outputs).float()
    assert steps.dtype == torch.float32 and outputs[0].dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(steps, whole, rtol=4 * eps, atol=4 * eps)
    torch.testing.assert_close(steps, reference, rtol=8 * eps, atol=8 * eps)
