"""A QRNN trained and run under CPU autocast, and a bfloat16 / float16 model, through the half-precision
kernels: error against a float64 copy at most twice that of the same model on the reference backend (whose
pooling computes the same formulas with PyTorch ops), for bidirectional, packed and zoneout runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torchqrnn import QRNN


def error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return (got.double() - exact).abs().max().item()


def run(qrnn: QRNN, x, h0, packed: bool, autocast: torch.dtype | None, seed: int = 0):
    """Output, final state and every parameter's gradient (and the input's) of one training step."""
    torch.manual_seed(seed)  # zoneout's masks: the same for every backend
    qrnn.zero_grad()
    x = x.detach().requires_grad_()
    lengths = torch.tensor([x.shape[0], x.shape[0] - 3, 2])
    source = pack_padded_sequence(x, lengths) if packed else x
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out, h_n = qrnn(source, h0)
    if packed:
        out, _ = pad_packed_sequence(out)
    weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
    (out.double() * weight).sum().add(h_n.double().square().sum()).backward()
    return [out, h_n, x.grad, *(p.grad for p in qrnn.parameters())]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("bidirectional", "packed"), [(False, False), (True, False), (True, True)])
def test_autocast_training_step_within_budget(dtype, bidirectional, packed) -> None:
    torch.manual_seed(1)
    qrnn = QRNN(24, 40, num_layers=2, window=[2, 1], bidirectional=bidirectional, zoneout=0.25)
    x = torch.randn(17, 3, 24)
    h0 = torch.randn(2 * (1 + bidirectional), 3, 40)
    exact_model = copy.deepcopy(qrnn).double()
    exact = run(exact_model, x.double(), h0.double(), packed, None)
    got = run(qrnn, x, h0, packed, dtype)
    for layer in qrnn.layers:
        layer.backend = "reference"
    budget = run(qrnn, x, h0, packed, dtype)
    assert got[0].dtype == dtype
    for g, b, e in zip(got, budget, exact, strict=True):
        assert g.dtype == b.dtype
        assert error(g, e) <= 2 * error(b, e) + 1e-4, (error(g, e), error(b, e))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_model_inference_within_budget(dtype) -> None:
    """A model converted to the half type: the projection and the pooling both in it."""
    torch.manual_seed(2)
    qrnn = QRNN(16, 32, num_layers=2, window=2, bidirectional=True).eval()
    x = torch.randn(40, 5, 16)
    with torch.no_grad():
        exact = copy.deepcopy(qrnn).double()(x.double())
        half = qrnn.to(dtype)
        got = half(x.to(dtype))
        for layer in half.layers:
            layer.backend = "reference"
        budget = half(x.to(dtype))
    for g, b, e in zip(got, budget, exact, strict=True):
        assert g.dtype == dtype
        assert error(g, e) <= 2 * error(b, e) + 1e-4, (error(g, e), error(b, e))
