"""The projection: any mix of oneDNN and MKL products gives F.linear's values and gradients; choices hold."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import textwrap

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
    monkeypatch.setattr(projection, "_probed", dict.fromkeys(projection.PROBED_DTYPES, choice))
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
    monkeypatch.setattr(projection, "_probed", {})
    verdict = projection.cpu_gemm()  # the probe runs once and decides each product
    assert set(verdict) == set(PRODUCTS) and set(verdict.values()) <= {"onednn", "linear"}
    assert projection._probed[torch.float32] is verdict and projection.cpu_gemm() is verdict
    assert projection.cpu_gemm(torch.float64) == dict.fromkeys(PRODUCTS, "linear")  # not probed


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
    with torch.autocast("cpu", dtype=torch.float16):  # float16: not probed
        projection.linear(x.float(), w.float(), None)
    monkeypatch.setattr(projection, "_setting", "linear")
    projection.linear(x.float(), w.float(), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projection.linear(x.float(), w.float(), None)
    assert calls == []


@needs_onednn
@pytest.mark.skipif(not projection._onednn_available(torch.bfloat16), reason="no oneDNN bfloat16 kernels")
@pytest.mark.parametrize(
    "libraries", [("onednn",) * 3, ("onednn", "linear", "onednn"), ("linear", "onednn", "linear")]
)
def test_bfloat16_autocast_matches_f_linear(monkeypatch: pytest.MonkeyPatch, libraries) -> None:
    """Under CPU autocast the projection casts as autocast does: bfloat16 output, float32 gradients."""
    use_choice(monkeypatch, dict(zip(PRODUCTS, libraries, strict=True)))
    source, weights = torch.randn(40, 3, 24), [torch.randn(36, 24), torch.randn(36)]
    results = []
    for use in (projection.linear, F.linear):
        x = source.clone().requires_grad_()
        w = [t.clone().requires_grad_() for t in weights]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = use(x, *w)
        assert out.dtype == torch.bfloat16
        grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape).bfloat16()
        results.append((out, *torch.autograd.grad(out, (x, *w), grad)))
    for got, expected in zip(*results, strict=True):
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_probe_leaves_the_global_random_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "_setting", "auto")
    monkeypatch.setattr(projection, "_probed", {})
    x, w = torch.randn(300, 8), torch.randn(12, 8)
    torch.manual_seed(0)
    projection.linear(x, w, None)  # the first large float32 product: the probe runs
    after_probe = torch.rand(4)
    torch.manual_seed(0)
    assert torch.float32 in projection._probed or not projection._onednn_available()
    assert torch.equal(after_probe, torch.rand(4))


def test_deterministic_mode_fixes_the_choice_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timing(dtype: torch.dtype) -> dict[str, str]:
        raise AssertionError("timed under deterministic algorithms")

    monkeypatch.setattr(projection, "_setting", None)
    monkeypatch.delenv("TORCHQRNN_CPU_GEMM", raising=False)
    monkeypatch.setattr(projection, "_probed", {})
    monkeypatch.setattr(projection, "_probe", no_timing)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for dtype in projection.PROBED_DTYPES:
            assert projection.cpu_gemm(dtype) == dict.fromkeys(PRODUCTS, "linear")
        if projection._onednn_available():  # an explicit setting still wins
            monkeypatch.setenv("TORCHQRNN_CPU_GEMM", "onednn")
            assert projection.cpu_gemm() == dict.fromkeys(PRODUCTS, "onednn")
    finally:
        torch.use_deterministic_algorithms(was)


_TRAINING_STEP = textwrap.dedent(
    """
    import hashlib, torch
    from torchqrnn import QRNN
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    qrnn = QRNN(48, 64, num_layers=2, window=[2, 1], zoneout=0.2, dropout=0.1)
    x = torch.randn(30, 12, 48)  # 360 rows: a product large enough for the probe
    out, h_n = qrnn(x)
    (out.square().sum() + h_n.sum()).backward()
    digest = hashlib.sha256()
    for t in (out, h_n, *(p.grad for p in qrnn.parameters()), torch.rand(3)):
        digest.update(t.detach().numpy().tobytes())
    print(digest.hexdigest())
    """
)


def test_two_processes_compute_the_same_bits() -> None:
    """With deterministic algorithms, outputs, gradients and the random stream after are bitwise equal."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHQRNN_CPU_GEMM"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", _TRAINING_STEP],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout.split()[-1]
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) == len(hashlib.sha256().hexdigest())
