"""bfloat16 and float16 in the numba kernels: read and written in place, computed in float32.

A half call must give, bit for bit, what widening its inputs to float32, running the float32 kernel and
rounding its results (round to nearest even, as ``Tensor.to``) gives, forward and backward, for every option,
and it must do so without a full-size cast: the kernels convert in registers.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torchqrnn.ops import _cpu
from torchqrnn.ops.forget_mult import cpu as forget_mult_cpu
from torchqrnn.ops.qrnn_pool import cpu as pool_cpu

HALVES = [torch.bfloat16, torch.float16]
POOLINGS = [(True, False), (False, False), (True, True), (False, True)]  # (output_gate, input_gate)
SHAPES = [(1, 1, 1), (1, 2, 5), (13, 3, 37), (40, 2, 130)]  # (T, B, H)


def widened(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype)


def assert_bitwise(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected), (got.float() - expected.float()).abs().max().item()


def pool_forward(gates, h0, mask, lengths, output_gate, input_gate, reverse, layout_of):
    steps, batch = gates.shape[:2]
    hidden = gates.shape[-1] // (2 + output_gate + input_gate)
    out = layout_of(torch.empty(steps, batch, hidden, dtype=gates.dtype))
    cells = layout_of(torch.empty(steps, batch, hidden, dtype=gates.dtype)) if output_gate else out
    hn = torch.empty(batch, hidden, dtype=gates.dtype)
    pool_cpu.forward(gates, h0, mask, 0.8, lengths, output_gate, input_gate, reverse, out, cells, hn)
    return out, cells, hn


def pool_backward(dout, dhn, gates, cells, h0, mask, lengths, output_gate, input_gate, reverse):
    dgates = torch.empty(gates.shape, dtype=gates.dtype)
    dh0 = torch.empty(gates.shape[1], cells.shape[-1], dtype=gates.dtype)
    pool_cpu.backward(
        dout, dhn, gates, cells, h0, mask, 0.8, lengths, output_gate, input_gate, reverse, dgates, dh0
    )
    return dgates, dh0


def batch_major(t: torch.Tensor) -> torch.Tensor:
    """A (T, B, H) view of (B, T, H) storage, as a batch_first call hands the kernels."""
    return torch.empty(t.shape[1], t.shape[0], t.shape[2], dtype=t.dtype).transpose(0, 1)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_pool_half_equals_float32_kernel_rounded(dtype, output_gate, input_gate, shape, reverse) -> None:
    steps, batch, hidden = shape
    width = (2 + output_gate + input_gate) * hidden
    for with_h0, masked, with_lengths, strided in itertools.product((False, True), repeat=4):
        wide = (3 * torch.randn(batch, steps, width + 3)).to(dtype)
        gates = (
            wide[..., 1 : width + 1].transpose(0, 1)
            if strided
            else wide[..., :width].transpose(0, 1).contiguous()
        )
        h0 = torch.randn(batch, hidden).to(dtype) if with_h0 else None
        mask = torch.rand(steps, batch, hidden) > 0.3 if masked else None
        lengths = torch.randint(0, steps + 1, (batch,)) if with_lengths else None
        layout_of = batch_major if strided else (lambda t: t)
        options = (mask, lengths, output_gate, input_gate, reverse)
        out, cells, hn = pool_forward(gates, h0, *options[:2], *options[2:], layout_of)
        out32, cells32, hn32 = pool_forward(widened(gates), widened(h0), *options, layout_of)
        for got, expected in ((out, out32), (cells, cells32), (hn, hn32)):
            assert_bitwise(got, rounded(expected, dtype))

        dout = torch.randn(steps, batch, hidden).to(dtype)
        if strided:
            dout = torch.randn(hidden).to(dtype).expand(steps, batch, hidden)  # out.sum()'s stride-0 gradient
        dhn = torch.randn(batch, hidden).to(dtype)
        grads = pool_backward(dout, dhn, gates, cells, h0, *options)
        grads32 = pool_backward(
            widened(dout), widened(dhn), widened(gates), widened(cells), widened(h0), *options
        )
        for got, expected in zip(grads, grads32, strict=True):
            assert_bitwise(got, rounded(expected, dtype))


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_forget_mult_half_equals_float32_kernel_rounded(dtype, shape, reverse) -> None:
    for with_h0, batch_major_layout in itertools.product((False, True), repeat=2):
        make = (
            (lambda: torch.rand(shape[1], shape[0], shape[2]).transpose(0, 1))
            if batch_major_layout
            else (lambda: torch.rand(shape))
        )
        f, x = make().to(dtype), (2 * make() - 1).to(dtype)
        h0 = torch.randn(shape[1:]).to(dtype) if with_h0 else None
        out, out32 = torch.empty(shape, dtype=dtype), torch.empty(shape)
        forget_mult_cpu.forward(f, x, h0, out, reverse)
        forget_mult_cpu.forward(widened(f), widened(x), widened(h0), out32, reverse)
        assert_bitwise(out, rounded(out32, dtype))

        dout = torch.randn(shape).to(dtype)
        grads = [
            torch.empty(shape, dtype=dtype),
            torch.empty(shape, dtype=dtype),
            torch.empty(shape[1:], dtype=dtype),
        ]
        grads32 = [torch.empty(shape), torch.empty(shape), torch.empty(shape[1:])]
        forget_mult_cpu.backward(dout, f, x, out, h0, reverse, *grads)
        forget_mult_cpu.backward(
            widened(dout), widened(f), widened(x), widened(out), widened(h0), reverse, *grads32
        )
        for got, expected in zip(grads, grads32, strict=True):
            assert_bitwise(got, rounded(expected, dtype))


@pytest.mark.parametrize("dtype", HALVES)
def test_parallel_chunks_in_half(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    monkeypatch.setattr(_cpu, "PARALLEL_MIN_NUMEL", 0)
    monkeypatch.setattr(_cpu, "MIN_CHUNK", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gates = (2 * torch.randn(9, 3, 3 * 150)).to(dtype)
        h0, lengths = torch.randn(3, 150).to(dtype), torch.tensor([9, 4, 0])
        options = (None, lengths, True, False, True)
        got = pool_forward(gates, h0, *options, lambda t: t)
        expected = pool_forward(gates.float(), h0.float(), *options, lambda t: t)
        for g, e in zip(got, expected, strict=True):
            assert_bitwise(g, rounded(e, dtype))
    finally:
        torch.set_num_threads(threads)


def test_bfloat16_rounding_is_to_nearest_even() -> None:
    """Ties go to the even bfloat16; the extremes and infinities survive; NaN stays NaN."""
    bits = torch.tensor(
        [0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0x7F7FFFFF, 0xFF800000, 0x00000001, 0x7FC00001],
        dtype=torch.int64,
    ).to(torch.int32)
    values = bits.view(torch.float32).reshape(1, 1, -1)
    out = torch.empty(values.shape, dtype=torch.bfloat16)
    ones = torch.ones_like(values)  # f = 1: out = x, one rounded store per element
    forget_mult_cpu.forward(ones, values, None, out, False)
    expected = values.to(torch.bfloat16)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    assert out.isnan()[..., -1].all()


class _CastRecorder(TorchDispatchMode):
    """The sizes of every conversion or copy that a call makes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func.__name__.startswith(("_to_copy", "copy_", "clone")):
            self.sizes.append(args[0].numel())
        return result


@pytest.mark.parametrize("dtype", HALVES)
def test_no_full_size_casts(dtype: torch.dtype) -> None:
    from torchqrnn import forget_mult
    from torchqrnn.ops.qrnn_pool import qrnn_pool

    steps, batch, hidden = 20, 4, 64
    gates = (2 * torch.randn(steps, batch, 3 * hidden)).to(dtype).requires_grad_()
    h0 = torch.randn(batch, hidden).to(dtype).requires_grad_()
    f = torch.rand(steps, batch, hidden).to(dtype).requires_grad_()
    x = torch.randn(steps, batch, hidden).to(dtype).requires_grad_()
    with _CastRecorder() as recorder:
        out, hn = qrnn_pool(gates, h0, reverse=True)
        torch.autograd.grad(out.sum() + hn.sum(), (gates, h0))
        torch.autograd.grad(forget_mult(f, x, h0[:, :hidden]).sum(), (f, x))
    assert all(size <= batch * hidden for size in recorder.sizes), recorder.sizes
