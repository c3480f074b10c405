"""qrnn_pool, the fused element-wise half of a layer: every kernel against the plain reference."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torchqrnn.ops.qrnn_pool import qrnn_pool, qrnn_pool_reference

KERNELS = ["cpu"]
POOLINGS = [  # (output_gate, input_gate): fo, f, ifo, if
    (True, False),
    (False, False),
    (True, True),
    (False, True),
]


def make_gates(
    steps, batch, hidden, *, output_gate=True, input_gate=False, batch_first=False, dtype=torch.float32
):
    width = (2 + output_gate + input_gate) * hidden
    shape = (batch, steps, width) if batch_first else (steps, batch, width)
    return (2 * torch.randn(shape, dtype=dtype)).requires_grad_()


def run_both(kernel, gates, h0, weight, final_weight, **options):
    """Outputs, final state and gradients (gates, h0) of a kernel and of the reference."""
    inputs = [gates] if h0 is None else [gates, h0]
    results = []
    for backend in (kernel, "reference"):
        out, hn = qrnn_pool(gates, h0, backend=backend, **options)
        loss = (out * weight).sum() + (hn * final_weight).sum()
        results.append((out, hn, *torch.autograd.grad(loss, inputs)))
    return results


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("steps", [1, 63, 1025])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_kernel_matches_reference(kernel, output_gate, input_gate, steps, reverse, with_h0) -> None:
    batch, hidden = (3, 37) if steps < 1000 else (2, 5)
    batch_first = steps == 63  # both layouts, without doubling the matrix
    gates = make_gates(
        steps, batch, hidden, output_gate=output_gate, input_gate=input_gate, batch_first=batch_first
    )
    h0 = torch.randn(batch, hidden, requires_grad=True) if with_h0 else None
    out_shape = (batch, steps, hidden) if batch_first else (steps, batch, hidden)
    options = dict(output_gate=output_gate, input_gate=input_gate, reverse=reverse, batch_first=batch_first)
    got, expected = run_both(kernel, gates, h0, torch.randn(out_shape), torch.randn(batch, hidden), **options)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("reverse", [False, True])
def test_zoneout_mask_scale_and_lengths(kernel, output_gate, input_gate, reverse) -> None:
    steps, batch, hidden = 11, 4, 19
    gates = make_gates(
        steps, batch, hidden, output_gate=output_gate, input_gate=input_gate, dtype=torch.float64
    )
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(steps, batch, hidden) > 0.3
    lengths = torch.tensor([11, 5, 1, 0])
    options = dict(
        output_gate=output_gate,
        input_gate=input_gate,
        reverse=reverse,
        forget_mask=mask,
        forget_scale=0.7,
        lengths=lengths,
    )
    weight = torch.randn(steps, batch, hidden, dtype=torch.float64)
    got, expected = run_both(
        kernel, gates, h0, weight, torch.randn(batch, hidden, dtype=torch.float64), **options
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    out, hn = got[0], got[1]
    # padding outputs are zero and a sequence of length 0 keeps its initial state
    assert torch.equal(out[5:, 1], torch.zeros_like(out[5:, 1])) and torch.equal(
        out[:, 3], torch.zeros_like(out[:, 3])
    )
    torch.testing.assert_close(hn[3], h0[3])
    fn = lambda g, h: qrnn_pool(g, h, backend=kernel, **options)
    assert torch.autograd.gradcheck(fn, (gates, h0))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_equal_running_each_sequence_alone(kernel, reverse) -> None:
    steps, hidden, lengths = 9, 6, [9, 4, 7]
    gates = make_gates(steps, len(lengths), hidden)
    out, hn = qrnn_pool(gates, lengths=torch.tensor(lengths), reverse=reverse, backend=kernel)
    for b, length in enumerate(lengths):
        alone, hn_alone = qrnn_pool(gates[:length, b : b + 1], reverse=reverse, backend=kernel)
        torch.testing.assert_close(out[:length, b : b + 1], alone)
        torch.testing.assert_close(hn[b : b + 1], hn_alone)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
def test_gradcheck_float64(kernel, output_gate, input_gate) -> None:
    for reverse, batch_first in itertools.product((False, True), repeat=2):
        gates = make_gates(
            6,
            2,
            3,
            output_gate=output_gate,
            input_gate=input_gate,
            batch_first=batch_first,
            dtype=torch.float64,
        )
        h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        options = dict(
            output_gate=output_gate, input_gate=input_gate, reverse=reverse, batch_first=batch_first
        )
        pool = functools.partial(qrnn_pool, backend=kernel, **options)
        assert torch.autograd.gradcheck(pool, (gates, h0))
        # the final state alone, and the output alone, must also carry gradient
        assert torch.autograd.gradcheck(lambda g, pool=pool: pool(g)[1], (gates,))
        assert torch.autograd.gradcheck(lambda g, pool=pool: pool(g)[0], (gates,))


@pytest.mark.parametrize("kernel", KERNELS)
def test_stride_zero_and_strided_gates(kernel) -> None:
    """A gate tensor sliced from a wider one, and ``out.sum().backward()`` (a stride-0 gradient)."""
    wide = torch.randn(8, 3, 40, requires_grad=True)
    results = []
    for backend in (kernel, "reference"):
        out, hn = qrnn_pool(wide[..., 4:34], backend=backend)  # 30 = 3 gates x 10, row stride 40
        (grad,) = torch.autograd.grad(out.sum() + hn.sum(), (wide,))
        results.append((out, hn, grad))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_parallel_chunks_match_reference(monkeypatch: pytest.MonkeyPatch, reverse: bool) -> None:
    from torchqrnn.ops import _cpu

    monkeypatch.setattr(_cpu, "PARALLEL_MIN_NUMEL", 0)
    monkeypatch.setattr(_cpu, "MIN_CHUNK", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gates = make_gates(13, 2, 150)
        h0 = torch.randn(2, 150, requires_grad=True)
        got, expected = run_both(
            "cpu", gates, h0, torch.randn(13, 2, 150), torch.randn(2, 150), reverse=reverse,
            lengths=torch.tensor([13, 6]),
        )  # fmt: skip
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=2e-5)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("reverse", [False, True])
def test_half_types(kernel, dtype, output_gate, input_gate, reverse) -> None:
    """Error against float64 at most twice that of the reference run on the same half inputs (which
    computes in float32), with zoneout, lengths and a final-state gradient."""
    steps, batch, hidden = 40, 3, 17
    gates = make_gates(steps, batch, hidden, output_gate=output_gate, input_gate=input_gate, dtype=dtype)
    h0 = torch.randn(batch, hidden, dtype=dtype, requires_grad=True)
    weight = torch.randn(steps, batch, hidden, dtype=dtype)
    final_weight = torch.randn(batch, hidden, dtype=dtype)
    options = dict(
        output_gate=output_gate, input_gate=input_gate, reverse=reverse, forget_scale=0.9,
        forget_mask=torch.rand(steps, batch, hidden) > 0.2, lengths=torch.tensor([40, 23, 0]),
    )  # fmt: skip
    got, budget = run_both(kernel, gates, h0, weight, final_weight, **options)
    exact_inputs = [t.detach().double().requires_grad_() for t in (gates, h0)]
    exact_out, exact_hn = qrnn_pool_reference(*exact_inputs, batch_first=False, **options)
    exact_loss = (exact_out * weight.double()).sum() + (exact_hn * final_weight.double()).sum()
    exact = (exact_out, exact_hn, *torch.autograd.grad(exact_loss, exact_inputs))
    for g, b, e in zip(got, budget, exact, strict=True):
        assert g.dtype == dtype
        error, allowed = (g.double() - e).abs().max().item(), (b.double() - e).abs().max().item()
        assert error <= 2 * allowed + 1e-6, (error, allowed)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_sequence_keeps_the_state(kernel) -> None:
    gates = make_gates(0, 2, 4)
    h0 = torch.randn(2, 4, requires_grad=True)
    out, hn = qrnn_pool(gates, h0, backend=kernel)
    assert out.shape == (0, 2, 4)
    torch.testing.assert_close(hn, h0)
    (dh0,) = torch.autograd.grad(hn.sum(), (h0,))
    torch.testing.assert_close(dh0, torch.ones_like(h0))


def test_bad_input() -> None:
    gates = torch.randn(3, 2, 12)
    with pytest.raises(ValueError, match="gates to be 3-D"):
        qrnn_pool(gates[0])
    with pytest.raises(ValueError, match="multiple of 3"):
        qrnn_pool(torch.randn(3, 2, 10))
    with pytest.raises(ValueError, match=r"h0 of shape \(2, 4\)"):
        qrnn_pool(gates, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"forget_mask of shape \(3, 2, 4\)"):
        qrnn_pool(gates, forget_mask=torch.ones(3, 2, 5, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"forget_mask of dtype torch\.bool"):
        qrnn_pool(gates, forget_mask=torch.ones(3, 2, 4))
    with pytest.raises(ValueError, match=r"lengths in \[0, 3\]"):
        qrnn_pool(gates, lengths=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match=r"lengths to be an int64 \(or int32\) tensor of shape"):
        qrnn_pool(gates, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="gates to be float32"):
        qrnn_pool(gates.long())


def test_torch_compile_fullgraph_matches_eager() -> None:
    torch._dynamo.reset()

    def step(gates: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        out, hn = qrnn_pool(gates * 1.5, h0, reverse=True, lengths=torch.tensor([5, 3]))
        return out.square().mean() + hn.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    inputs = [torch.randn(5, 2, 12, requires_grad=True), torch.randn(2, 4, requires_grad=True)]
    eager = (step(*inputs),)
    eager_grads = torch.autograd.grad(eager[0], inputs)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, eager[0])
    for g, e in zip(got_grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e)


class _Allocations(TorchDispatchMode):
    """The shapes of the tensors a call allocates."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default):
            self.shapes.append(tuple(result.shape))
        return result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("steps", [1, 37])
@pytest.mark.parametrize("reverse", [False, True])
def test_inference_stores_no_cell_states_and_equals_training(
    dtype, output_gate, input_gate, steps, reverse
) -> None:
    """Without a gradient to compute, the cell states (which only the backward pass reads) are not stored,
    and the results are bit for bit those of a call that keeps them."""
    batch, hidden = 3, 45
    for with_h0, masked, with_lengths, batch_first in itertools.product((False, True), repeat=4):
        gates = make_gates(steps, batch, hidden, output_gate=output_gate, input_gate=input_gate,
                           batch_first=batch_first, dtype=dtype)  # fmt: skip
        h0 = torch.randn(batch, hidden, dtype=dtype) if with_h0 else None
        shape = (batch, steps, hidden) if batch_first else (steps, batch, hidden)
        options = dict(
            output_gate=output_gate, input_gate=input_gate, reverse=reverse, batch_first=batch_first,
            forget_mask=torch.rand(shape) > 0.3 if masked else None, forget_scale=0.9,
            lengths=torch.randint(0, steps + 1, (batch,)) if with_lengths else None,
        )  # fmt: skip
        out, hn = qrnn_pool(gates, h0, **options)  # gates require grad: the cells are kept for backward
        with torch.no_grad(), _Allocations() as allocations:
            out_inference, hn_inference = qrnn_pool(gates, h0, **options)
        assert torch.equal(out_inference, out.detach()) and torch.equal(hn_inference, hn.detach())
        full_size = [s for s in allocations.shapes if len(s) == 3]
        assert full_size == [shape], allocations.shapes  # the output only
