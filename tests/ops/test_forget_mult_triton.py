"""The Triton ForgetMult kernels against the reference loop, run in Triton's CPU interpreter.

Both schedules (sequential, chunked scan) are forced on tiny shapes by replacing the one heuristic,
``choose_chunk``. The interpreter executes each kernel op in NumPy, one program at a time, so shapes stay
small; a GPU run of the same comparisons is the ``gpu``-marked test at the end.
"""

from __future__ import annotations

import os

# Before anything imports triton: the kernels are built for the interpreter when their module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package (pip install triton)")

from torchqrnn import forget_mult
from torchqrnn.ops.forget_mult import triton as triton_kernels

from .forget_mult_helpers import check_forget_mult_half_budget, make_inputs

# Forced schedules: 0 = the sequential kernel; 8 steps per chunk leaves a short last chunk for T = 37, 130.
SCHEDULES = {"sequential": 0, "chunked": 8}


@pytest.fixture(params=list(SCHEDULES))
def schedule(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    chunk = SCHEDULES[request.param]
    monkeypatch.setattr(triton_kernels, "choose_chunk", lambda steps, batch, hidden: chunk)
    return request.param


def values_and_grads(
    run: Callable[[], torch.Tensor],
    inputs: list[torch.Tensor],
    weight: torch.Tensor,
    last: int,
    time_dim: int,
) -> list[torch.Tensor]:
    """Outputs, the final state, and the gradients of a loss over every output plus the final state."""
    out = run()
    final = out.select(time_dim, last)
    loss = (out * weight).sum() + final.square().sum()
    return [out, final, *torch.autograd.grad(loss, inputs)]


# --- values and every gradient against the reference --------------------------------------------------


@pytest.mark.parametrize(("steps", "batch"), [(1, 3), (37, 3), (130, 1)], ids=["T1-B3", "T37-B3", "T130-B1"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["TBH", "BTH"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zeros", "h0"])
def test_matches_reference(
    schedule: str, steps: int, batch: int, reverse: bool, batch_first: bool, with_h0: bool
) -> None:
    hidden = 33  # not a multiple of any column block
    f, x, h0 = make_inputs(steps, batch, hidden, batch_first=batch_first, with_h0=with_h0)
    inputs = [t for t in (f, x, h0) if t is not None]
    weight = torch.randn(f.shape)
    time_dim, last = (1 if batch_first else 0), (0 if reverse else steps - 1)
    got, expected = (
        values_and_grads(
            lambda backend=backend: forget_mult(
                f, x, h0, batch_first=batch_first, reverse=reverse, backend=backend
            ),
            inputs,
            weight,
            last,
            time_dim,
        )
        for backend in ("triton", "reference")
    )
    assert got[0].shape == x.shape and got[0].is_contiguous()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_gates_at_and_outside_the_unit_interval(schedule: str) -> None:
    """f == 1 (would break a division by 1 - f), f == 0, and f outside [0, 1]: computed as written."""
    steps, batch, hidden = 21, 2, 5
    f = torch.rand(steps, batch, hidden) * 2.4 - 0.7
    f[::3] = 1.0
    f[1::5] = 0.0
    f = f.requires_grad_()
    x = torch.randn(steps, batch, hidden, requires_grad=True)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    weight = torch.randn(f.shape)
    for reverse in (False, True):
        got, expected = (
            values_and_grads(
                lambda backend=backend, reverse=reverse: forget_mult(
                    f, x, h0, reverse=reverse, backend=backend
                ),
                [f, x, h0],
                weight,
                0 if reverse else steps - 1,
                0,
            )
            for backend in ("triton", "reference")
        )
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert forget_mult(f[:1], x[:1], h0, backend="triton")[0].equal(x[0])  # f[0] == 1: exactly x, h0 ignored


def test_golden_case(schedule: str) -> None:
    x = torch.arange(3.0, 8.0)  # [3, 4, 5, 6, 7]
    f = torch.full((5,), 0.5)
    out = forget_mult(f.view(5, 1, 1), x.view(5, 1, 1), torch.ones(1, 1), backend="triton")
    assert out.flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    out_rev = forget_mult(f.view(5, 1), x.flip(0).view(5, 1), torch.ones(1), reverse=True, backend="triton")
    assert out_rev.flatten().tolist() == [6.0, 5.0, 4.0, 3.0, 2.0]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_strided_gate_slices_read_in_place(schedule: str, reverse: bool) -> None:
    """f and x as column slices of one projection (row stride 3H), a transposed h0, a stride-0 f."""
    steps, batch, hidden = 19, 3, 9
    projection = torch.randn(steps, batch, 3 * hidden, requires_grad=True)
    x, f_logits = projection[..., :hidden], projection[..., hidden : 2 * hidden]
    h0 = torch.randn(hidden, batch).t().requires_grad_()
    shared = torch.rand(steps, 1, hidden).expand(steps, batch, hidden)
    for make_f in (lambda: torch.sigmoid(f_logits), lambda: shared):
        results = []
        for backend in ("triton", "reference"):
            out = forget_mult(make_f(), x, h0, reverse=reverse, backend=backend)
            results.append((out, *torch.autograd.grad(out.pow(2).sum(), (projection, h0))))
        for got, expected in zip(*results, strict=True):
            torch.testing.assert_close(got, expected)


def test_kernels_read_strided_views_without_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher hands the caller's views to the kernels: no contiguous copies of f, x, out or dout."""
    seen: list[tuple[int, ...]] = []

    class Recording:
        """Stands in for a kernel: notes the strides of the tensors it is handed, then launches it."""

        def __init__(self, kernel) -> None:
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.extend(a.stride() for a in args if isinstance(a, torch.Tensor))
                return self.kernel[grid](*args, **kwargs)

            return launch

    for name in ("_forward_kernel", "_backward_kernel"):
        monkeypatch.setattr(triton_kernels, name, Recording(getattr(triton_kernels, name)))
    steps, batch, hidden = 6, 2, 4
    projection = torch.randn(batch, steps, 3 * hidden, requires_grad=True)  # batch-first gate slices
    f = torch.sigmoid(projection[..., :hidden])
    x = projection[..., hidden : 2 * hidden]
    forget_mult(f, x, batch_first=True, backend="triton").sum().backward()
    x_time_major = x.transpose(0, 1).stride()
    assert x_time_major == (3 * hidden, steps * 3 * hidden, 1)
    assert x_time_major in seen  # x, read through its batch-first gate-slice strides
    assert (0, 0, 0) in seen  # the expanded gradient of .sum(), read in place


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_stride_zero_incoming_gradient(schedule: str, reverse: bool) -> None:
    """``out.sum().backward()`` hands the op an expanded gradient of stride 0 in every dimension."""
    f, x, h0 = make_inputs(13, 3, 8)
    out = forget_mult(f, x, h0, reverse=reverse, backend="triton")
    out.sum().backward()
    got = (f.grad, x.grad, h0.grad)
    expected_out = forget_mult(f, x, h0, reverse=reverse, backend="reference")
    expected = torch.autograd.grad(expected_out, (f, x, h0), torch.ones_like(expected_out))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    ("schedule", "reverse", "batch_first", "batch"),
    [("sequential", False, False, 2), ("chunked", True, True, 1)],
    indirect=["schedule"],
)
def test_gradcheck_float64(schedule: str, reverse: bool, batch_first: bool, batch: int) -> None:
    # T = 9 in chunks of 8: a full chunk and a one-step chunk. Tiny, as every numerical derivative is a
    # forward pass through the interpreter.
    f, x, h0 = make_inputs(9, batch, 2, batch_first=batch_first, dtype=torch.float64)
    fn = lambda f, x, h0: forget_mult(f, x, h0, batch_first=batch_first, reverse=reverse, backend="triton")
    assert torch.autograd.gradcheck(fn, (f, x, h0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_half_types_accumulate_in_float32(schedule: str, dtype: torch.dtype, reverse: bool) -> None:
    """Error against float64 at most twice that of the plain loop run in the same half dtype."""
    check_forget_mult_half_budget("triton", dtype, 64, reverse)


@pytest.mark.parametrize("batch_first", [False, True], ids=["TBH", "BTH"])
@pytest.mark.parametrize("shape", [(0, 3, 4), (4, 0, 3), (4, 3, 0)], ids=["T0", "B0", "H0"])
def test_empty_inputs(schedule: str, batch_first: bool, shape: tuple[int, int, int]) -> None:
    steps, batch, hidden = shape
    f, x, h0 = make_inputs(steps, batch, hidden, batch_first=batch_first)
    out = forget_mult(f, x, h0, batch_first=batch_first, backend="triton")
    assert out.shape == x.shape and out.dtype == x.dtype
    df, dx, dh0 = torch.autograd.grad(out.sum(), (f, x, h0), allow_unused=True, materialize_grads=True)
    assert df.shape == f.shape and dx.shape == x.shape
    assert torch.equal(dh0, torch.zeros_like(h0))


# --- the schedule ------------------------------------------------------------------------------------------


def test_choose_chunk_picks_the_chunked_scan_for_few_long_columns() -> None:
    choose = triton_kernels.choose_chunk
    assert choose(64, 256, 320) == 0  # many columns: the sequential grid fills the GPU
    assert choose(40, 1, 320) == 0  # too short to split
    for steps, batch, hidden in [(1024, 1, 320), (4096, 1, 1024), (105, 20, 640)]:
        chunk = choose(steps, batch, hidden)
        chunks = -(-steps // chunk)
        assert chunk >= triton_kernels._MIN_CHUNK_STEPS and chunks >= 2, (steps, batch, hidden, chunk)
        assert batch * hidden * chunks <= 2 * triton_kernels._TARGET_COLUMNS
    assert choose(1024, 1, 320) < choose(1024, 1, 320 * 16)  # fewer columns: more, shorter chunks
    assert -(-(1 << 22) // choose(1 << 22, 1, 1)) <= triton_kernels._MAX_CHUNKS  # the grid's z limit is 65535


def test_heuristic_choice_matches_reference_on_a_chunked_shape() -> None:
    """Unforced: a shape the heuristic itself sends to the chunked scan gives the reference's answer."""
    steps, batch, hidden = 70, 1, 3
    assert triton_kernels.choose_chunk(steps, batch, hidden) == 35
    f, x, h0 = make_inputs(steps, batch, hidden)
    weight = torch.randn(f.shape)
    got, expected = (
        values_and_grads(
            lambda backend=backend: forget_mult(f, x, h0, reverse=True, backend=backend),
            [f, x, h0],
            weight,
            0,
            0,
        )
        for backend in ("triton", "reference")
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


# --- the real GPU (the GPU benchmark runs in its CPU form in tests/bench/test_acceptance.py) ----------------


_GPU_CHECK = """
import torch, torchqrnn
from torchqrnn.ops.forget_mult import triton as kernels
torch.manual_seed(0)
heuristic = kernels.choose_chunk
for steps, batch, hidden, dtype in [(130, 3, 33, torch.float32), (1024, 1, 320, torch.float32),
                                    (200, 2, 65, torch.bfloat16), (64, 256, 320, torch.float16)]:
    for forced in (0, 8, None):  # sequential, chunked, the heuristic's choice
        kernels.choose_chunk = heuristic if forced is None else (lambda s, b, h, c=forced: c)
        for reverse in (False, True):
            f = torch.rand(batch, steps, hidden, device="cuda", dtype=dtype, requires_grad=True)
            x = torch.randn(batch, steps, hidden, device="cuda", dtype=dtype, requires_grad=True)
            h0 = torch.randn(batch, hidden, device="cuda", dtype=dtype, requires_grad=True)
            results = []
            for backend in ("triton", "reference"):
                out = torchqrnn.forget_mult(f, x, h0, batch_first=True, reverse=reverse, backend=backend)
                results.append((out, *torch.autograd.grad(out.float().square().sum(), (f, x, h0))))
            for got, expected in zip(*results, strict=True):
                # half types: both accumulate in float32, but round h, and so h_prev in df, differently
                scale = 2e-2 * expected.abs().max().item()
                tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": scale}
                torch.testing.assert_close(got, expected, **tol)
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernels_on_gpu() -> None:
    """The compiled kernels (not the interpreter: a fresh process without TRITON_INTERPRET)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", _GPU_CHECK], check=True, env=env, timeout=600)
