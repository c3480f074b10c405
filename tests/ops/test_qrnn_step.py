"""qrnn_step, one fused inference step: the kernel against the reference, and its contract."""

from __future__ import annotations

import pytest
import torch

from torchqrnn.ops.qrnn_step import cpu as step_cpu
from torchqrnn.ops.qrnn_step import qrnn_step

POOLINGS = [(True, False), (False, False), (True, True), (False, True)]


def make(batch: int, size: int, hidden: int, gates: int, dtype: torch.dtype = torch.float32):
    return (
        torch.randn(batch, size, dtype=dtype),
        torch.randn(gates * hidden, size, dtype=dtype) / size**0.5,
        torch.randn(gates * hidden, dtype=dtype),
        torch.randn(batch, hidden, dtype=dtype),
    )


@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("blas_in_kernel", [True, False])
def test_kernel_matches_reference(
    monkeypatch, output_gate, input_gate, batch, dtype, threads, blas_in_kernel
):
    """Both ways a step computes its product (torch's BLAS called inside the kernel for a batch of one;
    torch's own product, then the gates kernel) against the plain reference."""
    monkeypatch.setattr(step_cpu, "_BLAS_IN_KERNEL", blas_in_kernel and step_cpu._BLAS_IN_KERNEL)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        source, weight, bias, h0 = make(batch, 29, 37, 2 + output_gate + input_gate, dtype)
        for state, b in ((h0, bias), (None, None)):
            options = dict(output_gate=output_gate, input_gate=input_gate, forget_scale=0.75)
            with torch.no_grad():
                got = qrnn_step(source, weight, b, state, **options)
                expected = qrnn_step(source, weight, b, state, backend="reference", **options)
            # half types: the kernel keeps the gates in float32 (bfloat16 batch 1: MKL's bfloat16 product with
            # float32 sums), the reference rounds them to the half type first
            tolerance = {
                torch.float64: 1e-12,
                torch.float32: 2e-6,
                torch.bfloat16: 2e-2,
                torch.float16: 2e-3,
            }[dtype]
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance)
    finally:
        torch.set_num_threads(before)


def test_parameters_replaced_in_place_are_seen() -> None:
    """New data under the same parameter must be read: new storage, and new values in the same storage."""
    source, weight, bias, h0 = make(2, 8, 5, 3)
    weight = torch.nn.Parameter(weight)
    with torch.no_grad():
        first = qrnn_step(source, weight, bias, h0)
        weight.data = torch.randn_like(weight)  # new storage
        second = qrnn_step(source, weight, bias, h0)
        weight.mul_(0.5)  # same storage, new values
        third = qrnn_step(source, weight, bias, h0)
        expected = qrnn_step(source, weight, bias, h0, backend="reference")
    assert not torch.equal(first[0], second[0]) and not torch.equal(second[0], third[0])
    torch.testing.assert_close(third, expected)


def test_contract() -> None:
    source, weight, bias, h0 = make(2, 8, 5, 3)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"expected source \(B, K\) and weight \(3 \* H, K\)"):
            qrnn_step(source, weight[:, :7], bias, h0)
        with pytest.raises(ValueError, match=r"bias of shape \(15,\)"):
            qrnn_step(source, weight, bias[:4], h0)
        with pytest.raises(ValueError, match=r"h0 of shape \(2, 5\)"):
            qrnn_step(source, weight, bias, h0[:1])
    with pytest.raises(RuntimeError, match=r"computes no gradient; call it under torch.no_grad\(\)"):
        qrnn_step(source.requires_grad_(), weight, bias, h0)


def test_torch_blas_is_reached_from_the_kernel() -> None:
    """On x86 Linux builds torch exports its BLAS's gemv, which the batch-1 kernel calls (the fast path)."""
    import platform

    from torchqrnn.ops import _blas

    if platform.machine() in ("x86_64", "AMD64"):
        assert _blas.AVAILABLE


@pytest.mark.parametrize(("output_gate", "input_gate"), POOLINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_equals_the_pooling_bit_for_bit_under_deterministic_algorithms(output_gate, input_gate, dtype):
    """With torch.use_deterministic_algorithms(True) a step takes the generic path's product (F.linear), and
    its gates kernel does the pooling kernel's arithmetic term for term: the same bits as F.linear then
    qrnn_pool with T = 1, h0 or not, batch 1 and 3."""
    from torchqrnn.ops.qrnn_pool import qrnn_pool

    torch.use_deterministic_algorithms(True)
    try:
        for batch in (1, 3):
            source, weight, bias, h0 = make(batch, 29, 37, 2 + output_gate + input_gate, dtype)
            for state in (h0, None):
                with torch.no_grad():
                    got = qrnn_step(
                        source, weight, bias, state, output_gate=output_gate, input_gate=input_gate
                    )
                    gates = torch.nn.functional.linear(source, weight, bias)[None]
                    out, hn = qrnn_pool(gates, state, output_gate=output_gate, input_gate=input_gate)
                assert torch.equal(got[0], out[0]) and torch.equal(got[1], hn)
    finally:
        torch.use_deterministic_algorithms(False)
