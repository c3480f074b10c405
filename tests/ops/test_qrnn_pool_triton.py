"""The Triton qrnn_pool kernels against the plain reference, run in Triton's CPU interpreter.

The interpreter executes each kernel op in NumPy, one program (sequence x column block) at a time, so shapes
stay small and the option matrix is covered rather than crossed in full: every pooling kind runs in both
directions at T in {1, 37, 130}, and each (pooling kind, direction) pair sees both layouts and both initial
states across its three lengths. A GPU run of the same comparisons (and a CUDA-graph capture of the
launchers) is the ``gpu``-marked test at the end.
"""

from __future__ import annotations

import os

# Before anything imports triton: the kernels are built for the interpreter when their module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

pytest.importorskip("triton", reason="the Triton kernels need the triton package (pip install triton)")

from torchqrnn import QRNN
from torchqrnn.ops.qrnn_pool import qrnn_pool, qrnn_pool_reference
from torchqrnn.ops.qrnn_pool import triton as triton_kernels

POOLINGS = {"fo": (True, False), "f": (False, False), "ifo": (True, True), "if": (False, True)}


def make_gates(
    steps: int,
    batch: int,
    hidden: int,
    *,
    output_gate: bool = True,
    input_gate: bool = False,
    batch_first: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    width = (2 + output_gate + input_gate) * hidden
    shape = (batch, steps, width) if batch_first else (steps, batch, width)
    return (2 * torch.randn(shape, dtype=dtype)).requires_grad_()


def values_and_grads(
    backend: str,
    gates: torch.Tensor,
    h0: torch.Tensor | None,
    weight: torch.Tensor,
    final_weight: torch.Tensor,
    **options: object,
) -> list[torch.Tensor]:
    """Output, final state, and the gradients (gates, h0) of a loss over every output plus the final state."""
    out, hn = qrnn_pool(gates, h0, backend=backend, **options)
    loss = (out * weight).sum() + (hn * final_weight).sum()
    inputs = [gates] if h0 is None else [gates, h0]
    return [out, hn, *torch.autograd.grad(loss, inputs)]


def compare_with_reference(
    gates: torch.Tensor, h0: torch.Tensor | None, *, tol: float | None = None, **options: object
) -> list[torch.Tensor]:
    """Triton against the reference on the same inputs; returns the Triton results."""
    out_shape = qrnn_pool(gates.detach(), backend="reference", **options)[0].shape
    hidden, batch = out_shape[-1], out_shape[0 if options.get("batch_first") else 1]
    weight = torch.randn(out_shape, dtype=gates.dtype)
    final_weight = torch.randn(batch, hidden, dtype=gates.dtype)
    got = values_and_grads("triton", gates, h0, weight, final_weight, **options)
    expected = values_and_grads("reference", gates, h0, weight, final_weight, **options)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)  # None: the dtype's defaults
    return got


# --- values and every gradient against the reference --------------------------------------------------


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    ("steps", "batch", "batch_first", "with_h0"),
    [(1, 3, True, True), (37, 2, False, False), (130, 1, True, False)],
    ids=["T1", "T37", "T130"],
)
def test_matches_reference(
    pooling: str, reverse: bool, steps: int, batch: int, batch_first: bool, with_h0: bool
) -> None:
    # The reverse direction flips layout and initial state, so each (pooling, direction) sees all four.
    batch_first, with_h0 = batch_first != reverse, with_h0 != reverse
    output_gate, input_gate = POOLINGS[pooling]
    hidden = 33  # not a multiple of any column block
    gates = make_gates(
        steps, batch, hidden, output_gate=output_gate, input_gate=input_gate, batch_first=batch_first
    )
    h0 = torch.randn(batch, hidden, requires_grad=True) if with_h0 else None
    out = compare_with_reference(
        gates,
        h0,
        tol=2e-5,
        output_gate=output_gate,
        input_gate=input_gate,
        reverse=reverse,
        batch_first=batch_first,
    )[0]
    assert out.shape == (*gates.shape[:2], hidden)


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_zoneout_mask_scale_and_lengths(pooling: str, reverse: bool) -> None:
    """float64, so the comparison is tight: a zoneout mask, a forget scale, lengths with a length-0 and a
    full-length sequence, sorted in one direction and unsorted in the other (and batch-first there)."""
    output_gate, input_gate = POOLINGS[pooling]
    steps, hidden = 11, 19
    lengths = torch.tensor([4, 11, 0, 1, 7]) if reverse else torch.tensor([11, 7, 4, 1, 0])
    batch, batch_first = len(lengths), reverse
    gates = make_gates(
        steps,
        batch,
        hidden,
        output_gate=output_gate,
        input_gate=input_gate,
        batch_first=batch_first,
        dtype=torch.float64,
    )
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(*gates.shape[:2], hidden) > 0.3
    out, hn, _, _ = compare_with_reference(
        gates,
        h0,
        output_gate=output_gate,
        input_gate=input_gate,
        reverse=reverse,
        batch_first=batch_first,
        forget_mask=mask,
        forget_scale=0.7,
        lengths=lengths,
    )
    out = out.transpose(0, 1) if batch_first else out
    for b, length in enumerate(lengths.tolist()):
        assert torch.equal(out[length:, b], torch.zeros_like(out[length:, b]))  # padding outputs are zero
    empty = lengths.tolist().index(0)
    assert torch.equal(hn[empty], h0[empty])  # a length-0 sequence keeps its initial state


def test_lengths_are_clamped_in_the_kernel() -> None:
    """Called past the dispatcher's check (as under torch.compile): lengths < 0 act as 0, > T as T; int32
    lengths are read as they are."""
    steps, hidden = 6, 5
    gates = 2 * torch.randn(steps, 4, 3 * hidden)
    h0 = torch.randn(4, hidden)

    def launch(lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, cells, hn = (
            torch.empty(steps, 4, hidden),
            torch.empty(steps, 4, hidden),
            torch.empty(4, hidden),
        )
        triton_kernels.forward(gates, h0, None, 1.0, lengths, True, False, False, out, cells, hn)
        return out, cells, hn

    for got, expected in zip(
        launch(torch.tensor([-3, 9, 2, 6], dtype=torch.int32)),
        launch(torch.tensor([0, 6, 2, 6])),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("pooling", "reverse"),
    [("fo", False), ("f", True), ("ifo", True), ("if", False)],
    ids=["fo-fwd", "f-rev", "ifo-rev", "if-fwd"],
)
def test_gradcheck_float64(pooling: str, reverse: bool) -> None:
    """Tiny (every numerical derivative is a forward pass through the interpreter), with every option on
    (batch-first in reverse); hidden = 1 also exercises Triton's specialisation of integer arguments equal
    to 1. Each pooling kind runs one direction here; test_zoneout_mask_scale_and_lengths runs both."""
    output_gate, input_gate = POOLINGS[pooling]
    steps, batch = 3, 2
    gates = make_gates(
        steps,
        batch,
        1,
        output_gate=output_gate,
        input_gate=input_gate,
        batch_first=reverse,
        dtype=torch.float64,
    )
    h0 = torch.randn(batch, 1, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, True, False]]).view(batch, steps, 1)
    options = dict(
        output_gate=output_gate,
        input_gate=input_gate,
        reverse=reverse,
        batch_first=reverse,
        forget_mask=mask if reverse else mask.transpose(0, 1),
        forget_scale=0.8,
        lengths=torch.tensor([3, 1]),  # a full sequence, and one ending in padding
    )
    fn = lambda g, h: qrnn_pool(g, h, backend="triton", **options)
    assert torch.autograd.gradcheck(fn, (gates, h0))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_strided_gates_and_stride_zero_gradient(reverse: bool) -> None:
    """Gates sliced from a wider tensor (row stride 40, offset 4), a transposed h0, and
    ``(out.sum() + hn.sum()).backward()``, whose output gradient has stride 0 in every dimension."""
    wide = torch.randn(9, 3, 40, requires_grad=True)
    h0 = torch.randn(10, 3).t().requires_grad_()
    results = []
    for backend in ("triton", "reference"):
        out, hn = qrnn_pool(wide[..., 4:34], h0, reverse=reverse, backend=backend)  # 30 = 3 gates x 10
        results.append((out, hn, *torch.autograd.grad(out.sum() + hn.sum(), (wide, h0))))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)


class Recording:
    """Stands in for a kernel: notes the tensors it is handed, then launches the real one (or not)."""

    def __init__(self, kernel: Any, seen: list[torch.Tensor]) -> None:
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        def launch(*args: object, **kwargs: object) -> None:
            self.seen.extend(a for a in args if isinstance(a, torch.Tensor))
            if self.kernel is not None:
                self.kernel[grid](*args, **kwargs)

        return launch


def test_kernels_read_views_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch-first gates, the bool zoneout mask (as uint8) and a stride-0 gradient reach the kernels as the
    caller's views: no contiguous copies."""
    seen: list[torch.Tensor] = []
    for name in ("_forward_kernel", "_backward_kernel"):
        monkeypatch.setattr(triton_kernels, name, Recording(getattr(triton_kernels, name), seen))
    steps, batch, hidden = 5, 2, 4
    gates = torch.randn(batch, steps, 3 * hidden, requires_grad=True)
    mask = torch.rand(batch, steps, hidden) > 0.5
    out, _ = qrnn_pool(gates, forget_mask=mask, batch_first=True, backend="triton")
    out.sum().backward()
    strides = [(t.dtype, t.stride()) for t in seen]
    assert (gates.dtype, gates.transpose(0, 1).stride()) in strides  # (T, B, G*H) view of (B, T, G*H)
    assert (torch.uint8, mask.transpose(0, 1).stride()) in strides  # the bool mask, reinterpreted
    assert (gates.dtype, (0, 0, 0)) in strides  # the expanded gradient of .sum(), read in place


def test_launchers_read_nothing_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA-graph capture and torch.compile need launchers that never read a tensor's values on the host:
    every such read raises here while the launchers run (the kernels themselves are stubbed out)."""
    seen: list[torch.Tensor] = []
    for name in ("_forward_kernel", "_backward_kernel"):
        monkeypatch.setattr(triton_kernels, name, Recording(None, seen))

    def host_read(self: torch.Tensor, *args: object) -> object:
        raise AssertionError("a launcher read a tensor's values on the host")

    for method in ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, host_read)
    steps, batch, hidden = 4, 3, 2
    gates, h0 = torch.randn(steps, batch, 3 * hidden), torch.randn(batch, hidden)
    mask, lengths = torch.ones(steps, batch, hidden, dtype=torch.bool), torch.tensor([4, 0, 2])
    out, cells, hn = (torch.empty(steps, batch, hidden) for _ in range(3))
    triton_kernels.forward(gates, h0, mask, 0.5, lengths, True, False, True, out, cells, hn)
    dgates, dh0 = torch.empty_like(gates), torch.empty_like(h0)
    triton_kernels.backward(out, hn, gates, cells, h0, mask, 0.5, lengths, True, False, True, dgates, dh0)
    assert len(seen) == 7 + 9  # every operand reached a kernel


@pytest.fixture
def gpu_bfloat16_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round float32 -> bfloat16 to nearest even in the interpreter, as a GPU's conversion does.

    Triton 3.9's interpreter truncates that conversion (and its explicit round-to-nearest path drops the
    carry into the exponent), which doubles the rounding error of every bfloat16 store; the kernels'
    arithmetic, not the interpreter's rounding, is what this file checks.
    """
    import triton.language as tl
    from triton.runtime import interpreter

    truncating = interpreter._convert_float

    def convert(values: np.ndarray, src: object, dst: object, rounding: object) -> np.ndarray:
        if src == tl.float32 and dst == tl.bfloat16:
            rounded = torch.from_numpy(np.array(values, dtype=np.float32)).to(torch.bfloat16)
            return rounded.view(torch.int16).numpy().view(np.uint16)
        return truncating(values, src, dst, rounding)

    monkeypatch.setattr(interpreter, "_convert_float", convert)


@pytest.mark.usefixtures("gpu_bfloat16_rounding")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("pooling", "reverse"), [("fo", False), ("ifo", True)], ids=["fo-fwd", "ifo-rev"])
def test_half_types(dtype: torch.dtype, pooling: str, reverse: bool) -> None:
    """Error against float64 at most twice that of the reference run on the same half inputs."""
    output_gate, input_gate = POOLINGS[pooling]
    steps, batch, hidden = 40, 2, 17
    gates = make_gates(steps, batch, hidden, output_gate=output_gate, input_gate=input_gate, dtype=dtype)
    h0 = torch.randn(batch, hidden, dtype=dtype, requires_grad=True)
    weight = torch.randn(steps, batch, hidden, dtype=dtype)
    final_weight = torch.randn(batch, hidden, dtype=dtype)
    options = dict(
        output_gate=output_gate,
        input_gate=input_gate,
        reverse=reverse,
        lengths=torch.tensor([40, 23]) if reverse else None,
    )
    got = values_and_grads("triton", gates, h0, weight, final_weight, **options)
    budget = values_and_grads("reference", gates, h0, weight, final_weight, **options)
    exact_inputs = [t.detach().double().requires_grad_() for t in (gates, h0)]
    exact_out, exact_hn = qrnn_pool_reference(
        *exact_inputs,
        forget_mask=None,
        forget_scale=1.0,
        batch_first=False,
        **options,
    )
    exact_loss = (exact_out * weight.double()).sum() + (exact_hn * final_weight.double()).sum()
    exact = [exact_out, exact_hn, *torch.autograd.grad(exact_loss, exact_inputs)]
    for g, b, e in zip(got, budget, exact, strict=True):
        assert g.dtype == dtype
        error, allowed = (g.double() - e).abs().max().item(), (b.double() - e).abs().max().item()
        assert error <= 2 * allowed + 1e-6, (error, allowed)


@pytest.mark.parametrize("shape", [(0, 3, 4), (4, 0, 3), (4, 3, 0)], ids=["T0", "B0", "H0"])
def test_empty_inputs(shape: tuple[int, int, int]) -> None:
    steps, batch, hidden = shape
    gates = make_gates(steps, batch, hidden)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    out, hn = qrnn_pool(gates, h0, backend="triton")
    assert out.shape == (steps, batch, hidden)
    torch.testing.assert_close(hn, h0)
    dgates, dh0 = torch.autograd.grad(
        out.sum() + hn.sum(), (gates, h0), allow_unused=True, materialize_grads=True
    )
    assert dgates.shape == gates.shape and torch.equal(dgates, torch.zeros_like(gates))
    torch.testing.assert_close(dh0, torch.ones_like(h0))


def test_torch_compile_fullgraph_matches_eager() -> None:
    """Traced, the op runs through ``torch.ops.torchqrnn.qrnn_pool`` (its fake kernel for shapes) and the
    dispatcher skips the host-side lengths check."""
    torch._dynamo.reset()

    def step(gates: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, hn = qrnn_pool(gates * 1.5, h0, reverse=True, lengths=lengths, backend="triton")
        return out.square().mean() + hn.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    gates, h0 = torch.randn(5, 2, 12, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    lengths = torch.tensor([5, 3])
    eager = step(gates, h0, lengths)
    eager_grads = torch.autograd.grad(eager, (gates, h0))
    got = compiled(gates, h0, lengths)
    got_grads = torch.autograd.grad(got, (gates, h0))
    torch.testing.assert_close(got, eager)
    for g, e in zip(got_grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e)


# --- whole modules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("training", "batch_first"), [(False, False), (True, True)], ids=["eval", "train"])
def test_qrnn_module_matches_reference(training: bool, batch_first: bool) -> None:
    """QRNN(2 layers, bidirectional, window 2, zoneout) on a PackedSequence of unsorted lengths: outputs, h_n,
    and the gradients of every parameter and of the input. In training the zoneout masks are drawn from the
    same seed for both backends."""
    input_size, hidden, lengths = 6, 5, [5, 7, 1, 6]
    modules = {
        backend: QRNN(
            input_size,
            hidden,
            num_layers=2,
            bidirectional=True,
            window=2,
            zoneout=0.3,
            batch_first=batch_first,
            backend=backend,
        ).train(training)
        for backend in ("triton", "reference")
    }
    modules["triton"].load_state_dict(modules["reference"].state_dict())
    padded = torch.randn(len(lengths), max(lengths), input_size)
    padded = padded if batch_first else padded.transpose(0, 1)
    packed = pack_padded_sequence(
        padded, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
    )
    weight = torch.randn(packed.data.shape[0], 2 * hidden)
    h0 = torch.randn(4, len(lengths), hidden)
    results = []
    for backend, module in modules.items():
        data = packed.data.detach().requires_grad_()
        torch.manual_seed(1)  # the same zoneout masks
        output, h_n = module(
            PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h0
        )
        loss = (output.data * weight).sum() + h_n.square().sum()
        grads = torch.autograd.grad(loss, [data, *module.parameters()])
        results.append((backend, output.data, h_n, *grads))
    (_, *got), (_, *expected) = results
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


# --- the real GPU ------------------------------------------------------------------------------------------

_GPU_CHECK = """
import torch, torchqrnn
from torchqrnn.ops.qrnn_pool import qrnn_pool
from torchqrnn.ops.qrnn_pool import triton as kernels
torch.manual_seed(0)
# T = 1 and H = 1: Triton compiles integer arguments equal to 1 as constants (the interpreter does not).
for steps, batch, hidden, dtype in [(130, 3, 33, torch.float32), (105, 20, 640, torch.float32),
                                    (64, 4, 65, torch.bfloat16), (40, 3, 17, torch.float64),
                                    (1, 3, 33, torch.float32), (9, 2, 1, torch.float64)]:
    for output_gate, input_gate in [(True, False), (False, False), (True, True), (False, True)]:
        for reverse in (False, True):
            width = (2 + output_gate + input_gate) * hidden
            gates = (2 * torch.randn(batch, steps, width, device="cuda", dtype=dtype)).requires_grad_()
            h0 = torch.randn(batch, hidden, device="cuda", dtype=dtype, requires_grad=True)
            mask = torch.rand(batch, steps, hidden, device="cuda") > 0.2
            lengths = torch.randint(0, steps + 1, (batch,), device="cuda")
            lengths[0] = steps
            lengths = lengths.cpu() if reverse else lengths  # a PackedSequence's lengths live on the CPU
            options = dict(output_gate=output_gate, input_gate=input_gate, reverse=reverse, batch_first=True,
                           forget_mask=mask, forget_scale=0.9, lengths=lengths)
            results = []
            for backend in ("triton", "reference"):
                out, hn = qrnn_pool(gates, h0, backend=backend, **options)
                loss = out.float().square().sum() + hn.float().sum()
                results.append((out, hn, *torch.autograd.grad(loss, (gates, h0))))
            for got, expected in zip(*results, strict=True):
                scale = expected.abs().max().item()
                tol = {"rtol": 2e-2, "atol": 2e-2 * scale} if dtype == torch.bfloat16 else {}
                torch.testing.assert_close(got, expected, **tol)

# The launchers captured in a CUDA graph (lengths on the device), replayed on new values written in place.
steps, batch, hidden = 50, 4, 96
gates = torch.randn(steps, batch, 3 * hidden, device="cuda")
h0, lengths = torch.randn(batch, hidden, device="cuda"), torch.tensor([50, 0, 17, 33], device="cuda")
out, cells = torch.empty(2, steps, batch, hidden, device="cuda").unbind(0)
hn, dgates, dh0 = torch.empty_like(h0), torch.empty_like(gates), torch.empty_like(h0)
dout, dhn = torch.randn_like(out), torch.randn_like(h0)
def launch():
    kernels.forward(gates, h0, None, 1.0, lengths, True, False, False, out, cells, hn)
    kernels.backward(dout, dhn, gates, cells, h0, None, 1.0, lengths, True, False, False, dgates, dh0)
stream = torch.cuda.Stream()
stream.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(stream):
    launch()  # compile outside the capture
torch.cuda.current_stream().wait_stream(stream)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    launch()
gates.copy_(torch.randn_like(gates))
lengths.copy_(torch.tensor([7, 50, 0, 49], device="cuda"))
graph.replay()
torch.cuda.synchronize()
g = gates.detach().clone().requires_grad_()
h = h0.clone().requires_grad_()
ref_out, ref_hn = qrnn_pool(g, h, lengths=lengths, backend="reference")
ref_dg, ref_dh0 = torch.autograd.grad((ref_out * dout).sum() + (ref_hn * dhn).sum(), (g, h))
for got, expected in [(out, ref_out), (hn, ref_hn), (dgates, ref_dg), (dh0, ref_dh0)]:
    torch.testing.assert_close(got, expected)
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernels_on_gpu() -> None:
    """The compiled kernels (not the interpreter: a fresh process without TRITON_INTERPRET)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", _GPU_CHECK], check=True, env=env, timeout=600)
