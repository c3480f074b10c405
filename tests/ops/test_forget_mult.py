"""ForgetMult: every kernel against the plain reference loop, values and every gradient, plus the contract."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import torchqrnn
from torchqrnn import ForgetMult, forget_mult

from .forget_mult_helpers import check_forget_mult_half_budget, make_inputs

KERNELS = ["cpu"]


def final_state(out: torch.Tensor, *, batch_first: bool, reverse: bool) -> torch.Tensor:
    index = 0 if reverse else -1
    return out[:, index] if batch_first else out[index]


def loss_and_grads(out: torch.Tensor, inputs: list[torch.Tensor], weight: torch.Tensor, last: torch.Tensor):
    """A loss over every output and, separately, the final state: both must carry gradient."""
    loss = (out * weight).sum() + (last * last).sum()
    return torch.autograd.grad(loss, inputs)


# --- the contract on small, hand-checked cases -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_golden_case(backend: str) -> None:
    x = torch.arange(3.0, 8.0)  # [3, 4, 5, 6, 7]
    f = torch.full((5,), 0.5)
    out = forget_mult(f.view(5, 1, 1), x.view(5, 1, 1), torch.ones(1, 1), backend=backend)
    assert out.flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    # the same sequence walked backwards from its end, unbatched
    out_rev = forget_mult(f.view(5, 1), x.flip(0).view(5, 1), torch.ones(1), reverse=True, backend=backend)
    assert out_rev.flatten().tolist() == [6.0, 5.0, 4.0, 3.0, 2.0]


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_reverse_is_flip(backend: str) -> None:
    f, x, h0 = make_inputs(9, 3, 7, requires_grad=False)
    flipped = forget_mult(f.flip(0), x.flip(0), h0, backend=backend).flip(0)
    torch.testing.assert_close(forget_mult(f, x, h0, reverse=True, backend=backend), flipped)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_forget_gate_outside_unit_interval_is_not_clamped(backend: str) -> None:
    f = torch.tensor([[[1.5]], [[-0.5]]])
    x = torch.tensor([[[2.0]], [[4.0]]])
    out = forget_mult(f, x, torch.tensor([[1.0]]), backend=backend)
    # h0 = 1.5*2 + (1-1.5)*1 = 2.5;  h1 = -0.5*4 + 1.5*2.5 = 1.75
    assert out.flatten().tolist() == [2.5, 1.75]


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_batch_first_and_unbatched_layouts_agree(backend: str) -> None:
    f, x, h0 = make_inputs(6, 4, 5, requires_grad=False)
    time_major = forget_mult(f, x, h0, backend=backend)
    batch_major = forget_mult(
        f.transpose(0, 1).contiguous(), x.transpose(0, 1).contiguous(), h0, batch_first=True, backend=backend
    )
    torch.testing.assert_close(batch_major.transpose(0, 1), time_major)
    assert batch_major.is_contiguous()
    single = forget_mult(f[:, 2], x[:, 2], h0[2], backend=backend)
    assert single.shape == (6, 5)
    torch.testing.assert_close(single, time_major[:, 2])
    # batch_first is ignored for unbatched input, as in nn.GRU
    torch.testing.assert_close(
        forget_mult(f[:, 2], x[:, 2], h0[2], batch_first=True, backend=backend), single
    )


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_sequence(backend: str, batch_first: bool) -> None:
    f, x, h0 = make_inputs(0, 3, 4, batch_first=batch_first)
    out = forget_mult(f, x, h0, batch_first=batch_first, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    if out.requires_grad:
        df, dx, dh0 = torch.autograd.grad(out.sum(), (f, x, h0), allow_unused=True, materialize_grads=True)
        assert df.shape == f.shape and dx.shape == x.shape
        assert torch.equal(dh0, torch.zeros_like(h0))


# --- every kernel against the reference: values and all gradients -----------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("steps", [1, 63, 1025])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_kernel_matches_reference(
    kernel: str, steps: int, reverse: bool, batch_first: bool, with_h0: bool
) -> None:
    batch, hidden = (3, 37) if steps < 1000 else (2, 5)
    f, x, h0 = make_inputs(steps, batch, hidden, batch_first=batch_first, with_h0=with_h0)
    inputs = [t for t in (f, x, h0) if t is not None]
    weight = torch.randn(f.shape)
    results = []
    for backend in (kernel, "reference"):
        out = forget_mult(f, x, h0, batch_first=batch_first, reverse=reverse, backend=backend)
        last = final_state(out, batch_first=batch_first, reverse=reverse)
        results.append((out, *loss_and_grads(out, inputs, weight, last)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_cpu_parallel_chunks_match_reference(
    monkeypatch: pytest.MonkeyPatch, reverse: bool, batch_first: bool
) -> None:
    """The threaded CPU kernels, forced on a small shape so that columns split into uneven chunks."""
    from torchqrnn.ops import _cpu

    monkeypatch.setattr(_cpu, "PARALLEL_MIN_NUMEL", 0)
    monkeypatch.setattr(_cpu, "MIN_CHUNK", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _cpu.schedule(33, 3, 150) == (2, 64)  # per sequence 150 columns: chunks of 64, 64, 22
        assert _cpu.schedule(33, 1, 450) == (2, 64)  # 8 jobs (at most JOBS_PER_THREAD per thread)
        f, x, h0 = make_inputs(33, 3, 150, batch_first=batch_first)
        weight = torch.randn(f.shape)
        results = []
        for backend in ("cpu", "reference"):
            out = forget_mult(f, x, h0, batch_first=batch_first, reverse=reverse, backend=backend)
            last = final_state(out, batch_first=batch_first, reverse=reverse)
            results.append((out, *loss_and_grads(out, [f, x, h0], weight, last)))
        for got, expected in zip(*results, strict=True):
            torch.testing.assert_close(got, expected)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_and_expanded_inputs(kernel: str) -> None:
    """Gate slices of one projection, a transposed h0 and a stride-0 f: read in place, same result."""
    steps, batch, hidden = 17, 4, 9
    projection = torch.randn(steps, batch, 3 * hidden, requires_grad=True)
    x, f_logits = projection[..., :hidden], projection[..., hidden : 2 * hidden]
    h0 = torch.randn(hidden, batch).t().requires_grad_()
    shared = torch.rand(steps, 1, hidden).expand(steps, batch, hidden)
    for make_f in (lambda: torch.sigmoid(f_logits), lambda: shared):
        for reverse in (False, True):
            grads = []
            for backend in (kernel, "reference"):
                out = forget_mult(make_f(), x, h0, reverse=reverse, backend=backend)
                grads.append((out, *torch.autograd.grad(out.pow(2).sum(), (projection, h0))))
            for got, expected in zip(*grads, strict=True):
                torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("reverse", [False, True])
def test_stride_zero_incoming_gradient(backend: str, reverse: bool) -> None:
    """``out.sum().backward()`` hands the op an expanded gradient of stride 0 (both references misread it)."""
    f, x, h0 = make_inputs(12, 3, 8)
    out = forget_mult(f, x, h0, reverse=reverse, backend=backend)
    out.sum().backward()
    got = (f.grad, x.grad, h0.grad)
    for t in (f, x, h0):
        t.grad = None
    expected_out = forget_mult(f, x, h0, reverse=reverse, backend="reference")
    expected = torch.autograd.grad(expected_out, (f, x, h0), torch.ones_like(expected_out))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gradcheck_float64(backend: str, reverse: bool, batch_first: bool) -> None:
    f, x, h0 = make_inputs(7, 3, 5, batch_first=batch_first, dtype=torch.float64)
    fn = lambda f, x, h0: forget_mult(f, x, h0, batch_first=batch_first, reverse=reverse, backend=backend)
    assert torch.autograd.gradcheck(fn, (f, x, h0))
    assert torch.autograd.gradcheck(lambda f, x: fn(f, x, None), (f, x))


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_half_types_accumulate_in_float32(backend: str, dtype: torch.dtype, reverse: bool) -> None:
    """Error against float64 at most twice that of the plain loop run in the same half dtype."""
    check_forget_mult_half_budget(backend, dtype, 200, reverse)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_half_types_match_reference(kernel: str) -> None:
    for dtype in (torch.bfloat16, torch.float16):
        f, x, h0 = make_inputs(31, 3, 17, dtype=dtype, batch_first=True)
        outs = [forget_mult(f, x, h0, batch_first=True, backend=b) for b in (kernel, "reference")]
        torch.testing.assert_close(outs[0], outs[1])


# --- the module form -----------------------------------------------------------------------------------


def test_forget_mult_module_salesforce_signature() -> None:
    f, x, h0 = make_inputs(5, 2, 3, requires_grad=False)
    module = ForgetMult()
    torch.testing.assert_close(module(f, x, h0, use_cuda=False), forget_mult(f, x, h0))
    torch.testing.assert_close(module(f, x), forget_mult(f, x))
    assert repr(module) == "ForgetMult()"
    reverse = ForgetMult(reverse=True, backend="reference")
    assert "reverse=True" in repr(reverse) and "backend='reference'" in repr(reverse)
    torch.testing.assert_close(reverse(f, x, h0), forget_mult(f, x, h0, reverse=True))
    with pytest.raises(ValueError, match="backend"):
        ForgetMult(backend="cuda")


# --- bad input: clear errors naming the argument -------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda: ([0.5], torch.ones(2, 1, 1), None, {}), TypeError, "f to be a Tensor, got list"),
        (lambda: (torch.ones(2, 1, 1), 3.0, None, {}), TypeError, "x to be a Tensor, got float"),
        (lambda: (torch.ones(4), torch.ones(4), None, {}), ValueError, r"x to be 2-D .* got a 1-D tensor"),
        (
            lambda: (torch.ones(2, 1, 3), torch.ones(2, 1, 4), None, {}),
            ValueError,
            r"f to have the shape of x",
        ),
        (lambda: (torch.ones(2, 1, 3, dtype=torch.int64),) * 2 + (None, {}), RuntimeError, "x to be float32"),
        (
            lambda: (torch.ones(2, 1, 3, dtype=torch.float64), torch.ones(2, 1, 3), None, {}),
            RuntimeError,
            r"f to have the dtype of x \(torch.float32\), got torch.float64",
        ),
        (
            lambda: (torch.ones(2, 1, 3, device="meta"), torch.ones(2, 1, 3), None, {}),
            RuntimeError,
            "f on the device of x",
        ),
        (lambda: (torch.ones(2, 1, 3),) * 2 + ([1.0], {}), TypeError, "h0 to be a Tensor"),
        (
            lambda: (torch.ones(2, 4, 3),) * 2 + (torch.ones(2, 3), {}),
            ValueError,
            r"h0 of shape \(4, 3\) .* got \(2, 3\)",
        ),
        (
            lambda: (torch.ones(2, 4, 3),) * 2 + (torch.ones(4, 3), {"batch_first": True}),
            ValueError,
            r"h0 of shape \(2, 3\) .*batch_first=True.* got \(4, 3\)",
        ),
        (
            lambda: (torch.ones(2, 3),) * 2 + (torch.ones(2, 3), {}),
            ValueError,
            r"h0 of shape \(3,\) or \(1, 3\) .*unbatched",
        ),
        (
            lambda: (torch.ones(2, 1, 3),) * 2 + (torch.ones(1, 3, dtype=torch.float64), {}),
            RuntimeError,
            "h0 to have the dtype torch.float32, got torch.float64",
        ),
        (
            lambda: (torch.ones(2, 1, 3),) * 2 + (torch.ones(1, 3, device="meta"), {}),
            RuntimeError,
            "h0 on the device cpu, got meta",
        ),
        (
            lambda: (torch.ones(2, 1, 3),) * 2 + (None, {"backend": "cuda"}),
            ValueError,
            "backend to be one of",
        ),
        (
            lambda: (torch.ones(2, 1, 3, device="meta"),) * 2 + (None, {"backend": "cpu"}),
            ValueError,
            "backend='cpu' runs on CPU tensors only, got tensors on meta",
        ),
    ],
)
def test_bad_input_raises_clearly(make, error: type[Exception], pattern: str) -> None:
    f, x, h0, kwargs = make()
    with pytest.raises(error, match=pattern):
        forget_mult(f, x, h0, **kwargs)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    f, x, _ = make_inputs(3, 1, 2, requires_grad=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        forget_mult(f, x, backend="triton")


def test_missing_numba_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchqrnn.ops import _dispatch

    monkeypatch.setitem(sys.modules, "numba", None)
    # the kernel module and the shared modules it imports numba through, as in a process that has none
    for module in ("torchqrnn.ops.forget_mult.cpu", "torchqrnn.ops._cpu", "torchqrnn.ops._numba_cache"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(_dispatch, "_kernel_modules", {})
    f, x, _ = make_inputs(3, 1, 2, requires_grad=False)
    with pytest.raises(ImportError, match="pip install numba"):
        forget_mult(f, x, backend="cpu")


# --- import hygiene and torch.compile --------------------------------------------------------------------


def test_import_compiles_nothing_and_loads_no_optional_package() -> None:
    code = (
        "import sys, torchqrnn\n"
        "loaded = [m for m in ('numba', 'triton', 'llvmlite') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert 'torchqrnn.ops.forget_mult.cpu' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_torch_compile_fullgraph_matches_eager() -> None:
    torch._dynamo.reset()

    def step(f_logits: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        out = forget_mult(torch.sigmoid(f_logits), torch.tanh(x), h0, reverse=True)
        return out.square().mean() + out[0].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    inputs = [t.requires_grad_() for t in (torch.randn(9, 2, 6), torch.randn(9, 2, 6), torch.randn(2, 6))]
    eager_loss = step(*inputs)
    eager_grads = torch.autograd.grad(eager_loss, inputs)
    compiled_loss = compiled(*inputs)
    compiled_grads = torch.autograd.grad(compiled_loss, inputs)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_public_api() -> None:
    assert torchqrnn.forget_mult is forget_mult
    assert isinstance(torchqrnn.__version__, str)
