"""Property-based differential tests: every public entry point against an independent float64 loop, over
sizes drawn on both sides of every threshold the code branches on (``torchqrnn.ops.thresholds``).

hypothesis draws the sizes, dtypes, options and GEMM settings; the loops here and in ``tests/nn/reference.py``
are written from the equations, share nothing with the library's code paths, and run in float64. The
tolerance is per dtype: a kernel may round differently from the loop, never compute something else.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: its kernels run interpreted

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchqrnn import QRNN, QRNNLayer, forget_mult
from torchqrnn.ops import linear as projection
from torchqrnn.ops import thresholds as th
from torchqrnn.ops.qrnn_pool import qrnn_pool

from .nn.reference import reference_layer, reference_qrnn

F64 = torch.float64
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2}
SETTINGS = settings(
    max_examples=int(os.environ.get("TORCHQRNN_PROPERTY_EXAMPLES", "20")),
    deadline=None,
    derandomize=True,  # the same examples in every run (CI is reproducible); raise the count to explore
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def around(*values: int) -> st.SearchStrategy[int]:
    """A value just below, at, or just above one of ``values`` (a threshold, or a size derived from one)."""
    return st.sampled_from(sorted({max(1, v + d) for v in values for d in (-1, 0, 1)}))


# (T, B, H) shapes that put T * B * H on both sides of the serial/parallel grain and B * H on both sides of
# the two-jobs width, with T = 1 and short sequences among them.
GRAIN = th.PARALLEL_MIN_NUMEL
shapes = st.one_of(
    st.tuples(st.integers(1, 9), st.integers(1, 5), st.integers(1, 23)),
    st.tuples(around(GRAIN // (2 * th.MIN_CHUNK)), st.just(2), around(th.MIN_CHUNK)),  # B*H ~ 2*MIN_CHUNK
    st.tuples(st.just(1), st.integers(1, 3), around(th.MIN_CHUNK)),  # T = 1 at the width threshold
)


def loop_forget_mult(f, x, h0, reverse):
    """h_t = f_t x_t + (1 - f_t) h_{t-1} in float64, walking back from the end when ``reverse``."""
    h = torch.zeros_like(x[0]) if h0 is None else h0
    out = [None] * x.shape[0]
    for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
        h = f[t] * x[t] + (1 - f[t]) * h
        out[t] = h
    return torch.stack(out)


def loop_pool(gates, h0, mask, lengths, scale, output_gate, input_gate, reverse):
    """The pooling from pre-activation gates (T, B, G*H) in float64; steps at or past a sequence's length are
    padding: zero output, state untouched (the reverse direction starts at each sequence's end)."""
    steps, batch = gates.shape[:2]
    hidden = gates.shape[2] // (2 + output_gate + input_gate)
    blocks = gates.split(hidden, 2)
    z, f = torch.tanh(blocks[0]), torch.sigmoid(blocks[1]) * scale
    if mask is not None:
        f = f * mask
    o = torch.sigmoid(blocks[2]) if output_gate else None
    i = torch.sigmoid(blocks[-1]) if input_gate else f
    c = torch.zeros(batch, hidden, dtype=gates.dtype) if h0 is None else h0
    out = torch.zeros(steps, batch, hidden, dtype=gates.dtype)
    valid = torch.ones(steps, batch, 1, dtype=torch.bool)
    if lengths is not None:
        valid = (torch.arange(steps)[:, None] < lengths[None, :])[..., None]
    for t in reversed(range(steps)) if reverse else range(steps):
        stepped = i[t] * z[t] + (1 - f[t]) * c
        c = torch.where(valid[t], stepped, c)
        h = c if o is None else o[t] * c
        out[t] = torch.where(valid[t], h, torch.zeros_like(h))
    return out, c


@SETTINGS
@given(
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    reverse=st.booleans(),
    with_h0=st.booleans(),
    batch_first=st.booleans(),
    threads=st.sampled_from([1, 2]),
    extra=st.sampled_from([(), (3,)]),  # trailing dims: (T, B, *) flattened by the op
)
def test_forget_mult_against_a_loop(shape, dtype, reverse, with_h0, batch_first, threads, extra) -> None:
    steps, batch, hidden = shape
    if extra and not _accepts_trailing_dims():
        extra = ()
    full = (steps, batch, hidden, *extra)
    f, x = torch.rand(full, dtype=F64), torch.randn(full, dtype=F64)
    h0 = torch.randn(batch, hidden, *extra, dtype=F64) if with_h0 else None
    expected = loop_forget_mult(f, x, h0, reverse)
    args = [t.to(dtype) for t in (f, x)]
    if batch_first:
        args = [t.transpose(0, 1) for t in args]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = forget_mult(
            *args, None if h0 is None else h0.to(dtype), batch_first=batch_first, reverse=reverse
        )
    finally:
        torch.set_num_threads(before)
    if batch_first:
        got = got.transpose(0, 1)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got.to(F64), expected, rtol=tolerance, atol=tolerance)


def _accepts_trailing_dims() -> bool:
    """Whether forget_mult takes (T, B, *) (SPEC §1); until it does, the property runs on 3-D tensors."""
    try:
        forget_mult(torch.rand(1, 1, 1, 2), torch.rand(1, 1, 1, 2))
    except ValueError:
        return False
    return True


@SETTINGS
@given(
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    pooling=st.sampled_from([(True, False), (False, False), (True, True), (False, True)]),
    reverse=st.booleans(),
    with_h0=st.booleans(),
    with_mask=st.booleans(),
    with_lengths=st.booleans(),
    scale=st.sampled_from([1.0, 0.75]),
)
def test_pooling_forward_and_backward_against_a_loop(
    shape, dtype, pooling, reverse, with_h0, with_mask, with_lengths, scale
) -> None:
    steps, batch, hidden = shape
    output_gate, input_gate = pooling
    count = 2 + output_gate + input_gate
    gates = torch.randn(steps, batch, count * hidden, dtype=F64)
    h0 = torch.randn(batch, hidden, dtype=F64) if with_h0 else None
    mask = torch.rand(steps, batch, hidden) > 0.3 if with_mask else None
    lengths = torch.randint(0, steps + 1, (batch,)) if with_lengths else None
    leaves = [gates.to(dtype).requires_grad_()] + ([h0.to(dtype).requires_grad_()] if with_h0 else [])
    out, hn = qrnn_pool(
        leaves[0], leaves[1] if with_h0 else None, output_gate=output_gate, input_gate=input_gate,
        forget_mask=mask, forget_scale=scale, lengths=lengths, reverse=reverse,
    )  # fmt: skip
    ref_leaves = [t.detach().to(F64).requires_grad_() for t in leaves]
    ref_out, ref_hn = loop_pool(
        ref_leaves[0],
        ref_leaves[1] if with_h0 else None,
        mask,
        lengths,
        scale,
        output_gate,
        input_gate,
        reverse,
    )
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(out.detach().to(F64), ref_out, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(hn.detach().to(F64), ref_hn, rtol=tolerance, atol=tolerance)
    weights = torch.randn(steps, batch, hidden, dtype=F64), torch.randn(batch, hidden, dtype=F64)
    got = torch.autograd.grad((out.to(F64) * weights[0]).sum() + (hn.to(F64) * weights[1]).sum(), leaves)
    expected = torch.autograd.grad((ref_out * weights[0]).sum() + (ref_hn * weights[1]).sum(), ref_leaves)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.to(F64), e, rtol=4 * tolerance, atol=4 * tolerance)


# Layers: (T, B) on both sides of the oneDNN row threshold, T = 1 (the fused step without grad; batch 1
# with the BLAS inside the kernel), under each GEMM setting.
ROWS = th.ONEDNN_MIN_ROWS
layer_sizes = st.one_of(
    st.tuples(st.just(th.SINGLE_STEP), st.sampled_from([1, 2, 5])),
    st.tuples(around(ROWS // 4), st.just(4)),
    st.tuples(st.just(1), around(ROWS)),
    st.tuples(st.integers(2, 9), st.integers(1, 4)),
)


@SETTINGS
@given(
    size=layer_sizes,
    gemm=st.sampled_from(["onednn", "linear", "auto"]),
    window=st.integers(1, 3),
    pooling=st.sampled_from([(True, False), (False, False), (True, True)]),
    backward=st.booleans(),
    with_h0=st.booleans(),
    grad=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_layer_against_the_equations(size, gemm, window, pooling, backward, with_h0, grad, dtype) -> None:
    steps, batch = size
    output_gate, input_gate = pooling
    layer = QRNNLayer(
        6, 5, window=window, output_gate=output_gate, input_gate=input_gate, backward=backward, dtype=dtype
    ).eval()
    x = torch.randn(steps, batch, 6, dtype=dtype)
    h0 = torch.randn(batch, 5, dtype=dtype) if with_h0 else None
    projection.set_cpu_gemm(gemm)
    try:
        with torch.set_grad_enabled(grad):
            leaf = x.clone().requires_grad_(grad)
            out, h_n = layer(leaf, h0)
            grads = torch.autograd.grad(out.pow(2).sum(), [leaf, *layer.parameters()]) if grad else None
    finally:
        projection.set_cpu_gemm("auto")
    ref_layer = QRNNLayer(
        6, 5, window=window, output_gate=output_gate, input_gate=input_gate, backward=backward, dtype=F64
    ).eval()
    ref_layer.load_state_dict({k: v.to(F64) for k, v in layer.state_dict().items()})
    ref_x = x.to(F64).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        ref_out, ref_c, _ = reference_layer(ref_layer, ref_x, None if h0 is None else h0.to(F64))
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out.detach().to(F64), ref_out.detach(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(h_n[0].detach().to(F64), ref_c.detach(), rtol=tolerance, atol=tolerance)
    if grad:
        expected = torch.autograd.grad(ref_out.pow(2).sum(), [ref_x, *ref_layer.parameters()])
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g.to(F64), e, rtol=10 * tolerance, atol=10 * tolerance)


@SETTINGS
@given(
    size=layer_sizes,
    windows=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    with_h0=st.booleans(),
)
def test_qrnn_stack_against_the_equations(size, windows, bidirectional, batch_first, with_h0) -> None:
    steps, batch = size
    qrnn = QRNN(
        4, 6, num_layers=len(windows), window=windows, bidirectional=bidirectional, batch_first=batch_first
    ).eval()
    directions = 2 if bidirectional else 1
    x = torch.randn(steps, batch, 4)
    h0 = torch.randn(len(windows) * directions, batch, 6) if with_h0 else None
    with torch.no_grad():
        out, h_n = qrnn(x.transpose(0, 1) if batch_first else x, h0)
        ref = QRNN(4, 6, num_layers=len(windows), window=windows, bidirectional=bidirectional, dtype=F64)
        ref.load_state_dict({k: v.to(F64) for k, v in qrnn.state_dict().items()})
        ref_out, ref_hn = reference_qrnn(ref, x.to(F64), None if h0 is None else h0.to(F64))
    if batch_first:
        out = out.transpose(0, 1)
    torch.testing.assert_close(out.to(F64), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h_n.to(F64), ref_hn, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(SETTINGS, max_examples=8)
@given(
    steps=st.sampled_from([1, 2, 2 * th.TRITON_MIN_CHUNK_STEPS - 1, 2 * th.TRITON_MIN_CHUNK_STEPS + 3]),
    batch=st.integers(1, 2),
    hidden=st.integers(1, 5),
    reverse=st.booleans(),
    with_h0=st.booleans(),
)
def test_triton_forget_mult_against_a_loop(steps, batch, hidden, reverse, with_h0) -> None:
    """The Triton kernels in the interpreter, on both sides of the chunked-scan length (few columns)."""
    pytest.importorskip("triton")
    f, x = torch.rand(steps, batch, hidden, dtype=F64), torch.randn(steps, batch, hidden, dtype=F64)
    h0 = torch.randn(batch, hidden, dtype=F64) if with_h0 else None
    got = forget_mult(
        f.float(), x.float(), None if h0 is None else h0.float(), reverse=reverse, backend="triton"
    )
    torch.testing.assert_close(got.to(F64), loop_forget_mult(f, x, h0, reverse), rtol=2e-5, atol=2e-5)
