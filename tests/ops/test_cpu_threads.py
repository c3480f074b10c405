"""The CPU kernels' thread schedule: threads follow torch's setting, small calls stay on the caller, and a
helper thread that does not get to run holds nothing back."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from torchqrnn import forget_mult
from torchqrnn.ops import _cpu
from torchqrnn.ops.qrnn_pool import qrnn_pool


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_threads_follow_torch(two_threads) -> None:
    assert _cpu.schedule(105, 1, 12800) == (2, 800)  # forget_mult merges B into H: 16 jobs
    assert _cpu.schedule(105, 20, 640) == (2, 640)  # one job per sequence: 20
    torch.set_num_threads(1)
    assert _cpu.schedule(105, 20, 640) == (1, 640)


def test_small_calls_stay_on_the_caller(two_threads) -> None:
    assert _cpu.schedule(1, 1, 320) == (1, 320)  # a streaming step
    assert _cpu.schedule(64, 1, 512) == (1, 512)  # below the grain: 32768 elements
    assert _cpu.schedule(1000, 1, 300) == (1, 300)  # too few columns for two jobs of MIN_CHUNK


def test_a_helper_that_never_runs_holds_nothing_back(monkeypatch: pytest.MonkeyPatch, two_threads) -> None:
    """The helper pool's only thread is blocked: the caller claims every job and cancels the helper's call."""
    blocked, release = ThreadPoolExecutor(1), threading.Event()
    blocked.submit(release.wait)
    monkeypatch.setattr(_cpu, "_helpers", blocked)
    try:
        f, x = torch.rand(105, 20, 640), torch.randn(105, 20, 640)
        out = forget_mult(f, x)  # would wait forever if the caller waited for the blocked helper
        gates = torch.randn(105, 20, 3 * 640)
        pooled, _ = qrnn_pool(gates)
    finally:
        release.set()
        blocked.shutdown()
    torch.testing.assert_close(out, forget_mult(f, x, backend="reference"))
    torch.testing.assert_close(pooled, qrnn_pool(gates, backend="reference")[0], rtol=1e-5, atol=2e-5)


def test_every_job_runs_once_with_helpers(two_threads) -> None:
    """Threads claim jobs from one counter: each column chunk is written once, forward and backward."""
    f = torch.rand(50, 7, 700, requires_grad=True)
    x = torch.randn(50, 7, 700, requires_grad=True)
    out = forget_mult(f, x)
    grads = torch.autograd.grad(out.square().sum(), (f, x))
    fr, xr = (t.detach().requires_grad_() for t in (f, x))
    expected = forget_mult(fr, xr, backend="reference")
    expected_grads = torch.autograd.grad(expected.square().sum(), (fr, xr))
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_a_forked_child_runs_the_kernels(monkeypatch: pytest.MonkeyPatch, two_threads) -> None:
    """The parent's helper threads do not exist in a child process: the child makes its own."""
    # Small enough that torch itself runs no OpenMP region (libgomp hangs in a forked child), threaded here.
    monkeypatch.setattr(_cpu, "PARALLEL_MIN_NUMEL", 0)
    f, x = torch.rand(8, 4, 256), torch.randn(8, 4, 256)
    expected = forget_mult(f, x)  # the parent's helper pool exists from here on
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fresh = _cpu._helpers is None  # the parent's pool forgotten
            same = np.array_equal(forget_mult(f, x).numpy(), expected.numpy())
            threaded = _cpu.schedule(8, 1, 1024)[0] == 2 and _cpu._helpers is not None
            os.write(write, b"1" if fresh and same and threaded else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as answer:
            assert answer.read() == b"1"
    finally:
        os.waitpid(pid, 0)
