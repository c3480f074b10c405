"""The projection: any mix of oneDNN and MKL products gives F.linear's values and gradients; choices hold."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from torchqrnn import QRNN
from torchqrnn.ops import linear as projection

needs_onednn = pytest.mark.skipif(
    not projection._onednn_available(), reason="this PyTorch build has no oneDNN"
)
PRODUCTS = ("forward", "input_grad", "weight_grad")


def use_choice(monkeypatch: pytest.MonkeyPatch, choice: dict[str, str]) -> None:
    monkeypatch.setattr(projection, "_setting", "auto")
    monkeypatch.setattr(projection, "_probed", choice)
    monkeypatch.setattr(projection, "ONEDNN_MIN_ROWS", 1)


@needs_onednn
@pytest.mark.parametrize("libraries", list(itertools.product(("onednn", "linear"), repeat=3)))
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_mix_matches_f_linear(monkeypatch: pytest.MonkeyPatch, libraries, with_bias: bool) -> None:
    use_choice(monkeypatch, dict(zip(PRODUCTS, libraries, strict=True)))
    source = torch.randn(9, 2, 7, 3).transpose(1, 2)  # awkward: 4-D, non-contiguous, odd sizes
    weights = [torch.randn(13, 3), torch.randn(13) if with_bias else None]
    results = []
    for use in (projection.linear, F.linear):
        x = source.clone().requires_grad_()
        w = [None if t is None else t.clone().requires_grad_() for t in weights]
        out = use(x, *w)
        grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        inputs = [t for t in (x, *w) if t is not None]
        results.append((out, *torch.autograd.grad(out, inputs, grad)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_layer_results_do_not_depend_on_the_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    qrnn = QRNN(6, 8, num_layers=2, window=2, bidirectional=True)
    x = torch.randn(5, 3, 6)
    results = []
    for library in ("onednn", "linear"):
        use_choice(monkeypatch, dict.fromkeys(PRODUCTS, library))
        qrnn.zero_grad()
        out, h_n = qrnn(x)
        (out.sum() + h_n.sum()).backward()
        results.append((out, h_n, *(p.grad for p in qrnn.parameters())))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_choice_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "_setting", None)
    monkeypatch.setenv("TORCHQRNN_CPU_GEMM", "linear")
    assert projection.cpu_gemm() == dict.fromkeys(PRODUCTS, "linear")
    monkeypatch.setenv("TORCHQRNN_CPU_GEMM", "fast")
    with pytest.raises(ValueError, match="TORCHQRNN_CPU_GEMM: expected one of"):
        projection.cpu_gemm()
    with pytest.raises(ValueError, match="set_cpu_gemm: expected one of"):
        projection.set_cpu_gemm("mkl")
    monkeypatch.setenv("TORCHQRNN_CPU_GEMM", "auto")
    monkeypatch.setattr(projection, "_probed", None)
    verdict = projection.cpu_gemm()  # the probe runs once and decides each product
    assert set(verdict) == set(PRODUCTS) and set(verdict.values()) <= {"onednn", "linear"}
    assert projection._probed is verdict and projection.cpu_gemm() is verdict


def test_plain_linear_where_onednn_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64, small products, the reference backend, autocast and an all-MKL verdict take F.linear."""
    calls = []
    monkeypatch.setattr(projection._Projection, "apply", lambda *a: calls.append(a))
    monkeypatch.setattr(projection, "_setting", "onednn")
    projection.linear(torch.randn(3, 4), torch.randn(5, 4), None)  # 3 rows: below ONEDNN_MIN_ROWS
    monkeypatch.setattr(projection, "ONEDNN_MIN_ROWS", 1)
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(projection.linear(x, w, None), F.linear(x, w))
    projection.linear(x.float(), w.float(), None, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projection.linear(x.float(), w.float(), None)
    monkeypatch.setattr(projection, "_setting", "linear")
    projection.linear(x.float(), w.float(), None)
    assert calls == []
