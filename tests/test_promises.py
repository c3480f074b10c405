"""Documented promises at every size and in every mode: seven cases a differential run found broken.

Each test states the promise, then checks it against the equations or ``backend="reference"`` on the sizes
and modes where it failed: double backward through every projection path at 256+ rows, parameter swapping
after a fused step, autocast streaming from ``initial_state()``, ``vmap`` with mapped lengths, infinities
and values near the float range on every kernel, patched projections on every path, and chunked streaming
to rounding.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: its kernels run interpreted

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchqrnn import QRNN, QRNNLayer, forget_mult
from torchqrnn.nn.streaming import StreamingQRNN
from torchqrnn.ops import linear as projection
from torchqrnn.ops import thresholds
from torchqrnn.ops.qrnn_pool import qrnn_pool
from torchqrnn.ops.qrnn_step import qrnn_step

INF = float("inf")


# 1. Double backward through every projection path the GEMM probe can pick, at 256+ rows ------------------

GEMM_CHOICES = {
    "onednn": dict.fromkeys(("forward", "input_grad", "weight_grad"), "onednn"),
    "linear": dict.fromkeys(("forward", "input_grad", "weight_grad"), "linear"),
    "mixed": {"forward": "onednn", "input_grad": "onednn", "weight_grad": "linear"},
}


def _penalty_grads(qrnn: QRNN, x: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    """A gradient penalty's gradients: d/d(x, params) of |d out^2 / dx|^2."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        (gx,) = torch.autograd.grad(qrnn(x)[0].float().pow(2).sum(), x, create_graph=True)
        penalty = gx.float().pow(2).sum()
    return list(torch.autograd.grad(penalty, [x, *qrnn.parameters()]))


@pytest.mark.parametrize("choice", list(GEMM_CHOICES))
@pytest.mark.parametrize(
    ("dtype", "autocast"), [(torch.float32, False), (torch.float64, False), (torch.float32, True)]
)
def test_double_backward_through_every_gemm_path(monkeypatch, choice, dtype, autocast) -> None:
    if choice != "linear" and not projection._onednn_available(torch.bfloat16 if autocast else dtype):
        pytest.skip("oneDNN has no kernels for this dtype on this CPU")
    monkeypatch.setattr(projection, "cpu_gemm", lambda dtype=torch.float32: GEMM_CHOICES[choice])
    qrnn = QRNN(8, 16, num_layers=2, window=[2, 1], dtype=dtype)
    rows = thresholds.ONEDNN_MIN_ROWS
    x = torch.randn(rows // 4, 4, 8, dtype=dtype, requires_grad=True)  # exactly the threshold's rows
    taken = []
    original = projection._Projection.apply
    monkeypatch.setattr(projection._Projection, "apply", lambda *a: taken.append(1) or original(*a))
    got = _penalty_grads(qrnn, x, autocast)
    # oneDNN in any product runs the projection's own autograd Function; all-"linear" is F.linear itself,
    # and float64 never takes oneDNN
    assert bool(taken) == (choice != "linear" and dtype != torch.float64)
    for layer in qrnn.layers:
        layer.backend = "reference"
    expected = _penalty_grads(qrnn, x, autocast)
    tolerance = {torch.float64: 1e-10, torch.float32: 2e-4}[dtype] if not autocast else 5e-2
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance * e.abs().max().item())


# 2. Parameters can be swapped after a fused streaming step ------------------------------------------------


def test_swap_tensors_after_a_fused_step() -> None:
    layer = QRNNLayer(4, 5, window=2).eval()
    step = torch.randn(1, 1, 4)
    with torch.no_grad():
        layer(step)  # the fused single step (it used to put a weakref on each weight)
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        layer.double()
        assert layer.linear.weight.dtype == torch.float64
        with torch.no_grad():
            out64 = layer(step.double())[0]
        layer.float()
        state = {k: torch.randn_like(v) for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
        with torch.no_grad():
            out = layer(step)[0]
            gates = F.linear(
                torch.cat([step, torch.zeros_like(step)], 2), state["linear.weight"], state["linear.bias"]
            )
            expected = qrnn_pool(gates, backend="reference")[0]
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out, expected)


# 3. Streaming under CPU bf16 autocast from initial_state(), layers above the first with window > 1 ----------


@pytest.mark.parametrize("windows", [[1, 2], [2, 3], [3, 1, 2]])
def test_autocast_streaming_from_initial_state(windows) -> None:
    qrnn = QRNN(4, 6, num_layers=len(windows), window=windows).eval()
    stream = StreamingQRNN(qrnn)
    x = torch.randn(7, 2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = qrnn(x)[0]
        state = stream.initial_state(2)
        chunks = []
        for chunk in (x[:1], x[1:4], x[4:5], x[5:]):
            out, *state = stream(chunk, *state)
            chunks.append(out)
    torch.testing.assert_close(torch.cat(chunks).float(), whole.float(), rtol=2e-2, atol=2e-2)


# 4. vmap over qrnn_pool with per-sample lengths ----------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
def test_vmap_with_mapped_lengths_equals_a_loop(batch_first) -> None:
    samples, steps, batch, hidden = 4, 5, 3, 2
    gates = (
        torch.randn(samples, batch, steps, 3 * hidden)
        if batch_first
        else torch.randn(samples, steps, batch, 3 * hidden)
    )
    h0 = torch.randn(samples, batch, hidden)
    lengths = torch.randint(0, steps + 1, (samples, batch))

    def pool(g, h, n):
        return qrnn_pool(g, h, lengths=n, batch_first=batch_first)

    out, hn = torch.func.vmap(pool)(gates, h0, lengths)
    for s in range(samples):
        expected = qrnn_pool(
            gates[s], h0[s], lengths=lengths[s], batch_first=batch_first, backend="reference"
        )
        torch.testing.assert_close((out[s], hn[s]), expected)
    bad = lengths.clone()
    bad[2, 1] = steps + 1
    with pytest.raises(ValueError, match=rf"expected lengths in \[0, {steps}\]"):
        torch.func.vmap(pool)(gates, h0, bad)


# 5. Infinities and values near the float range: the equation as written, on every kernel --------------------

BACKENDS = ["cpu", "triton"]


def _needs_triton(backend: str) -> None:
    if backend == "triton":
        pytest.importorskip("triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_forget_mult_infinite_state_and_extreme_inputs(backend, dtype, reverse) -> None:
    _needs_triton(backend)
    big = torch.finfo(dtype).max * 0.9
    f = torch.tensor([0.5, 0.25, 1.0, 0.0, 0.75, 0.5]).repeat_interleave(2).reshape(6, 1, 2)
    x = torch.tensor([1.0, big, -big, big, 2.0, -big]).repeat_interleave(2).reshape(6, 1, 2)
    for h0 in (torch.tensor([[INF, -INF]]), torch.tensor([[big, -big]]), None):
        args = [t.to(dtype) for t in (f, x)]
        state = None if h0 is None else h0.to(dtype)
        got = forget_mult(*args, state, reverse=reverse, backend=backend)
        expected = forget_mult(*args, state, reverse=reverse, backend="reference")
        # exact, but for one rounding of a half type (the Triton kernels may fuse a multiply-add)
        rtol = 0 if dtype != torch.bfloat16 or backend == "cpu" else 2**-7
        torch.testing.assert_close(got, expected, equal_nan=True, rtol=rtol, atol=0)
    # and the claim itself: an infinite state stays infinite through f < 1 (the rewrite gave NaN)
    h = forget_mult(
        torch.full((2, 1, 2), 0.5, dtype=dtype),
        torch.ones(2, 1, 2, dtype=dtype),
        torch.tensor([[INF, -INF]], dtype=dtype),
        backend=backend,
    )
    assert torch.equal(h[-1, 0].float(), torch.tensor([INF, -INF]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("output_gate", "input_gate"), [(True, False), (False, False), (True, True)])
def test_pooling_infinite_state(backend, output_gate, input_gate) -> None:
    _needs_triton(backend)
    count = 2 + output_gate + input_gate
    gates = torch.randn(4, 1, count * 2)
    h0 = torch.tensor([[INF, -INF]])
    got = qrnn_pool(gates, h0, output_gate=output_gate, input_gate=input_gate, backend=backend)
    expected = qrnn_pool(gates, h0, output_gate=output_gate, input_gate=input_gate, backend="reference")
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-6, atol=0)
    assert torch.isinf(got[1]).all()


@pytest.mark.parametrize("batch", [1, 3])
def test_step_infinite_state(batch) -> None:
    source, weight, bias = torch.randn(batch, 5), torch.randn(9, 5), torch.randn(9)
    h0 = torch.tensor([[INF, -INF, 1.0]]).expand(batch, 3).contiguous()
    with torch.no_grad():
        got = qrnn_step(source, weight, bias, h0)
        expected = qrnn_step(source, weight, bias, h0, backend="reference")
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert torch.isinf(got[1][:, :2]).all()


# 6. Patched projections are called on every path: T = 1 and T > 1, small and large batches, grad or not -----

SIZES = [(1, 1), (1, 3), (5, 2), (1, thresholds.ONEDNN_MIN_ROWS), (thresholds.ONEDNN_MIN_ROWS // 4, 4)]


def _expected(layer: QRNNLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's equations with the patched projection's meaning: twice the product."""
    source = torch.cat([x, F.pad(x, (0, 0, 0, 0, 1, 0))[:-1]], 2)  # [x_t; x_{t-1}]
    return qrnn_pool(2 * (source @ layer.linear.weight.T + layer.linear.bias), backend="reference")[0]


@pytest.mark.parametrize("patch", ["functional", "class"])
@pytest.mark.parametrize(("steps", "batch"), SIZES)
@pytest.mark.parametrize("grad", [False, True])
def test_patched_projections_are_called(monkeypatch, patch, steps, batch, grad) -> None:
    layer = QRNNLayer(4, 5, window=2).eval()
    x = torch.randn(steps, batch, 4)
    if patch == "functional":
        original = F.linear
        monkeypatch.setattr(torch.nn.functional, "linear", lambda i, w, b=None: 2 * original(i, w, b))
    else:
        original_forward = nn.Linear.forward
        monkeypatch.setattr(nn.Linear, "forward", lambda self, i: 2 * original_forward(self, i))
    with torch.set_grad_enabled(grad):
        out = layer(x)[0]
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), _expected(layer, x), rtol=1e-5, atol=1e-5)


# 7. Chunked streaming equals the whole sequence to rounding (not bit for bit), and what bounds it -----------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_streaming_is_equal_to_rounding(dtype) -> None:
    """The only difference is the projection's sums: a chunk's product adds its terms in another order
    than the whole sequence's (other GEMM kernels for other row counts). So the gates of each step differ
    by at most a few ulps of sum |w| |x| over the window, and the pooling (a contraction: |1 - f| < 1)
    carries no more than that into the states."""
    qrnn = QRNN(16, 32, num_layers=2, window=[2, 1], dtype=dtype).eval()
    stream = StreamingQRNN(qrnn)
    x = torch.randn(40, 3, 16, dtype=dtype)
    with torch.no_grad():
        whole, h_whole = qrnn(x)
        state = stream.initial_state(3)
        steps = []
        for t in range(x.shape[0]):
            out, *state = stream(x[t : t + 1], *state)
            steps.append(out)
    eps = torch.finfo(dtype).eps
    bound = 64 * eps * qrnn.layers[0].linear.in_features  # generous: terms x ulps, through two layers
    torch.testing.assert_close(torch.cat(steps), whole, rtol=0, atol=bound)
    torch.testing.assert_close(state[0], h_whole, rtol=0, atol=bound)
