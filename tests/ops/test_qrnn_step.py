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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parallel", [False, True])
def test_kernel_matches_reference(monkeypatch, output_gate, input_gate, batch, dtype, parallel) -> None:
    monkeypatch.setattr(step_cpu, "_PARALLEL_MIN_MACS", 0 if parallel else 1 << 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        source, weight, bias, h0 = make(batch, 29, 37, 2 + output_gate + input_gate, dtype)
        for state, b in ((h0, bias), (None, None)):
            options = dict(output_gate=output_gate, input_gate=input_gate, forget_scale=0.75)
            with torch.no_grad():
                got = qrnn_step(source, weight, b, state, **options)
                expected = qrnn_step(source, weight, b, state, backend="reference", **options)
            tolerance = 1e-12 if dtype == torch.float64 else 2e-6
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance)
    finally:
        torch.set_num_threads(threads)


def test_parameters_replaced_in_place_are_seen() -> None:
    """The kernel caches numpy views of the weights; new data under the same parameter must be read."""
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
