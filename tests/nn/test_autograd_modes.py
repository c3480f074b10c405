"""Every autograd mode gives what the reference gives, or a clear error: gradients of whatever requires grad
at T = 1 and T > 1, double backward, ``torch.func`` transforms, states carried under autocast."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, jacrev, jvp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

from torchqrnn import QRNN, QRNNLayer, forget_mult, qrnn_pool

from .reference import reference_layer

F64 = torch.float64
REQUIRES = list(itertools.product([False, True], repeat=5))  # weight, bias, input, h0, context


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize(("weight", "bias", "input", "h0", "context"), REQUIRES)
def test_whatever_requires_grad_gets_its_gradient(steps, weight, bias, input, h0, context) -> None:
    """Each parameter frozen or trainable, each input with or without grad, one step or several: the
    single-step path must not take a call whose graph something needs (bias-only fine-tuning at T = 1)."""
    torch.manual_seed(0)
    layer = QRNNLayer(3, 4, window=2, dtype=F64).eval()
    layer.linear.weight.requires_grad_(weight)
    layer.linear.bias.requires_grad_(bias)
    x = torch.randn(steps, 2, 3, dtype=F64, requires_grad=input)
    state = torch.randn(2, 4, dtype=F64, requires_grad=h0)
    window = torch.randn(1, 2, 3, dtype=F64, requires_grad=context)
    output, h_n, _ = layer.forward_stream(x, state, window)
    expected, expected_h, _ = reference_layer(layer, x, state, window)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n[0], expected_h)
    leaves = [t for t in (layer.linear.weight, layer.linear.bias, x, state, window) if t.requires_grad]
    assert output.requires_grad == bool(leaves)
    if leaves:
        got = torch.autograd.grad(output.pow(2).sum() + h_n.sum(), leaves)
        want = torch.autograd.grad(expected.pow(2).sum() + expected_h.sum(), leaves)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def test_bias_only_fine_tuning_of_a_stack_at_one_step() -> None:
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1])
    for layer in qrnn.layers:
        layer.linear.weight.requires_grad_(False)
    output, h_n = qrnn(torch.randn(1, 2, 3))
    (output.sum() + h_n.sum()).backward()
    assert all(
        layer.linear.bias.grad is not None and layer.linear.bias.grad.abs().sum() > 0 for layer in qrnn.layers
    )


@pytest.mark.parametrize("steps", [1, 2])
def test_single_steps_accept_exactly_what_the_generic_path_accepts(steps: int) -> None:
    layer = QRNNLayer(3, 4, window=2, save_prev_x=True).eval()
    x = torch.randn(steps, 2, 3)
    with torch.no_grad():
        with pytest.raises(
            RuntimeError, match=r"expected context of dtype torch.float32 on cpu, got torch.float64"
        ):
            layer.forward_stream(x, None, torch.zeros(1, 2, 3, dtype=F64))
        with pytest.raises(TypeError, match="expected context to be a Tensor, got list"):
            layer.forward_stream(x, None, [torch.zeros(1, 2, 3)])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected hidden to be a Tensor, got list"):
            layer(x, [torch.zeros(2, 4)])  # type: ignore[arg-type]
        layer(x)  # saves a batched context; then unbatched input must be told to reset
        with pytest.raises(RuntimeError, match=r"saved by save_prev_x from an earlier call, call reset\(\)"):
            layer(x[:, 0])
        layer.reset()
        layer(x[:, 0])
        with pytest.raises(RuntimeError, match=r"saved by save_prev_x from an earlier call, call reset\(\)"):
            layer(x)


def test_a_packed_sequence_of_the_wrong_dtype_is_named() -> None:
    packed = pack_padded_sequence(torch.randn(4, 2, 3, dtype=F64), [4, 2])
    with pytest.raises(
        RuntimeError, match=r"QRNNLayer: expected input of dtype torch.float32 \(the parameters'\)"
    ):
        QRNNLayer(3, 4)(packed)
    with pytest.raises(
        RuntimeError, match=r"QRNN: expected input of dtype torch.float32 \(the parameters'\)"
    ):
        QRNN(3, 4)(packed)


# --- double backward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize(("reverse", "batch_first", "with_h0"), [(False, False, True), (True, True, False)])
def test_forget_mult_gradgradcheck(backend, reverse, batch_first, with_h0) -> None:
    torch.manual_seed(1)
    f = torch.rand(4, 3, 2, dtype=F64, requires_grad=True)
    x = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(4 if batch_first else 3, 2, dtype=F64, requires_grad=True) if with_h0 else None
    inputs = (f, x) if h0 is None else (f, x, h0)

    def op(*args: Tensor) -> Tensor:
        return forget_mult(*args, reverse=reverse, batch_first=batch_first, backend=backend)

    assert gradcheck(op, inputs)
    assert gradgradcheck(op, inputs)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize(
    ("output_gate", "input_gate", "masked", "lengths", "reverse"),
    [(True, False, False, False, False), (False, True, True, True, True), (True, True, False, True, False)],
)
def test_qrnn_pool_gradgradcheck(backend, output_gate, input_gate, masked, lengths, reverse) -> None:
    torch.manual_seed(2)
    count = 2 + output_gate + input_gate
    gates = torch.randn(4, 3, count * 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    mask = torch.rand(4, 3, 2) > 0.3 if masked else None
    options = dict(
        output_gate=output_gate, input_gate=input_gate, forget_mask=mask, forget_scale=0.9,
        lengths=torch.tensor([4, 1, 3]) if lengths else None, reverse=reverse, backend=backend,
    )  # fmt: skip

    def op(gates: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        return qrnn_pool(gates, h0, **options)  # type: ignore[arg-type]

    assert gradcheck(op, (gates, h0))
    assert gradgradcheck(op, (gates, h0))


def test_the_hessian_of_forget_mult_is_the_references() -> None:
    torch.manual_seed(3)
    f, v = torch.rand(5, 2, 3, dtype=F64), torch.randn(5, 2, 3, dtype=F64)
    hessians = [
        torch.autograd.functional.hessian(lambda f, b=backend: forget_mult(f, v, backend=b).pow(2).sum(), f)
        for backend in ("cpu", "reference")
    ]
    assert hessians[1].abs().sum() > 1
    torch.testing.assert_close(*hessians)


def test_a_gradient_penalty_on_a_qrnn_matches_the_reference() -> None:
    torch.manual_seed(4)
    results = []
    for backend in ("auto", "reference"):
        torch.manual_seed(4)
        qrnn = QRNN(3, 5, num_layers=2, window=[2, 1], bidirectional=True, backend=backend, dtype=F64)
        x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
        (gx,) = torch.autograd.grad(qrnn(x)[0].sum(), x, create_graph=True)
        gx.pow(2).sum().backward()
        results.append([p.grad for p in qrnn.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


# --- torch.func --------------------------------------------------------------------------------------


def test_vmap_over_the_ops_and_the_modules() -> None:
    torch.manual_seed(5)
    f, x = torch.rand(4, 5, 2, 3, dtype=F64), torch.randn(4, 5, 2, 3, dtype=F64)
    torch.testing.assert_close(
        vmap(forget_mult)(f, x), torch.stack([forget_mult(*p) for p in zip(f, x, strict=True)])
    )
    gates = torch.randn(4, 5, 2, 9, dtype=F64)
    out, h = vmap(qrnn_pool)(gates)
    torch.testing.assert_close(out, torch.stack([qrnn_pool(g)[0] for g in gates]))
    torch.testing.assert_close(h, torch.stack([qrnn_pool(g)[1] for g in gates]))
    xs = torch.randn(4, 6, 2, 3, dtype=F64)
    for module in (QRNNLayer(3, 4, window=2, dtype=F64), QRNN(3, 4, num_layers=2, window=[2, 1], dtype=F64)):
        with torch.no_grad():
            out, h = vmap(module)(xs)
            torch.testing.assert_close(out, torch.stack([module(sample)[0] for sample in xs]))
            torch.testing.assert_close(h, torch.stack([module(sample)[1] for sample in xs]))


def test_grad_jacrev_and_jvp_of_forget_mult() -> None:
    torch.manual_seed(6)
    f, x = torch.rand(5, 2, 3, dtype=F64), torch.randn(5, 2, 3, dtype=F64)
    leaf = f.clone().requires_grad_()
    forget_mult(leaf, x).pow(2).sum().backward()
    torch.testing.assert_close(grad(lambda f: forget_mult(f, x).pow(2).sum())(f), leaf.grad)
    jacobian = jacrev(lambda f: forget_mult(f, x, backend="reference"))(f)
    torch.testing.assert_close(jacrev(lambda f: forget_mult(f, x))(f), jacobian)
    tangent = torch.randn_like(f)
    _, derivative = jvp(lambda f: forget_mult(f, x), (f,), (tangent,))
    torch.testing.assert_close(derivative, (jacobian * tangent).sum(dim=(3, 4, 5)))


def test_per_sample_gradients_with_vmap_of_grad() -> None:
    """The DP-SGD pattern: ``vmap(grad(loss))`` over the samples of a batch equals a loop over them."""
    torch.manual_seed(7)
    qrnn = QRNN(3, 4, num_layers=2, window=[2, 1], dtype=F64)
    samples = torch.randn(5, 6, 3, dtype=F64)  # 5 unbatched sequences (T, I)
    params = {name: p.detach() for name, p in qrnn.named_parameters()}

    def loss(params: dict[str, Tensor], sample: Tensor) -> Tensor:
        output, h_n = functional_call(qrnn, params, (sample,))
        return output.pow(2).sum() + h_n.sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, samples)
    for index, sample in enumerate(samples):
        qrnn.zero_grad()
        loss(dict(qrnn.named_parameters()), sample).backward()
        for name, p in qrnn.named_parameters():
            torch.testing.assert_close(per_sample[name][index], p.grad)


# --- autocast ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_state_returned_under_autocast_feeds_the_next_call(dtype: torch.dtype) -> None:
    torch.manual_seed(8)
    qrnn = QRNN(8, 16, num_layers=2, window=[2, 1], save_prev_x=True)
    layer = QRNNLayer(8, 16, window=3)
    x = torch.randn(12, 3, 8)
    with torch.autocast("cpu", dtype=dtype):
        _, h = qrnn(x[:6])
        _, h = qrnn(x[6:], h)
        assert h.dtype == dtype
        _, h_layer, context = layer.forward_stream(x[:6])
        layer.forward_stream(x[6:], h_layer, context)


def test_chunked_training_under_bf16_autocast_equals_the_whole_sequence() -> None:
    torch.manual_seed(9)
    qrnn = QRNN(8, 16, num_layers=2, window=[2, 1])
    x = torch.randn(20, 3, 8)
    results = []
    for chunks in (1, 4):
        qrnn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h, contexts, outputs = None, None, []
            for chunk in x.chunk(chunks):
                output, h, contexts = qrnn.forward_stream(chunk, h, contexts)
                outputs.append(output)
            whole = torch.cat(outputs)
            (whole.float().pow(2).sum() + h.float().sum()).backward()
        results.append((whole.float(), h.float(), *(p.grad for p in qrnn.parameters())))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)


def test_forward_mode_ad_gives_the_references_tangents() -> None:
    """Dual tensors of ``torch.autograd.forward_ad`` run the reference (a kernel would drop the tangents)."""
    from torch.autograd import forward_ad

    torch.manual_seed(10)
    f, x, gates = torch.rand(5, 2, 3), torch.randn(5, 2, 3), torch.randn(5, 2, 9)
    layer = QRNNLayer(3, 4, window=2).eval()
    x_tangent = torch.randn_like(x)
    with forward_ad.dual_level(), torch.no_grad():
        tangents = [
            forward_ad.unpack_dual(forget_mult(forward_ad.make_dual(f, torch.ones_like(f)), x)).tangent,
            forward_ad.unpack_dual(qrnn_pool(forward_ad.make_dual(gates, torch.ones_like(gates)))[0]).tangent,
            forward_ad.unpack_dual(layer(forward_ad.make_dual(x[:1], x_tangent[:1]))[0]).tangent,
        ]
    expected = [
        jvp(lambda f: forget_mult(f, x), (f,), (torch.ones_like(f),))[1],
        jvp(lambda g: qrnn_pool(g)[0], (gates,), (torch.ones_like(gates),))[1],
        jvp(lambda x: layer(x)[0], (x[:1],), (x_tangent[:1],))[1],
    ]
    for tangent, want in zip(tangents, expected, strict=True):
        assert tangent is not None
        torch.testing.assert_close(tangent, want)


@pytest.mark.parametrize(
    ("output_gate", "input_gate", "batch_first", "reverse", "masked", "lengths"),
    [
        (True, False, False, False, False, False),
        (False, False, True, True, True, False),
        (True, True, False, True, False, True),
        (False, True, True, False, True, True),
    ],
)
def test_vmap_and_per_sample_gradients_of_qrnn_pool(
    output_gate, input_gate, batch_first, reverse, masked, lengths
) -> None:
    torch.manual_seed(11)
    count, size, steps, batch, hidden = 2 + output_gate + input_gate, 3, 5, 2, 3
    layout = (batch, steps) if batch_first else (steps, batch)
    gates = torch.randn(size, *layout, count * hidden, dtype=F64)
    h0 = torch.randn(size, batch, hidden, dtype=F64)
    mask = torch.rand(*layout, hidden) > 0.3 if masked else None  # shared by every sample (unmapped)
    options = dict(
        output_gate=output_gate, input_gate=input_gate, batch_first=batch_first, reverse=reverse,
        forget_mask=mask, forget_scale=0.9, lengths=torch.tensor([5, 2]) if lengths else None,
    )  # fmt: skip

    def loss(gates: Tensor, h0: Tensor) -> Tensor:
        out, h_n = qrnn_pool(gates, h0, **options)  # type: ignore[arg-type]
        return out.pow(2).sum() + h_n.sum()

    out, h_n = vmap(lambda g, h: qrnn_pool(g, h, **options))(gates, h0)  # type: ignore[arg-type]
    grads = vmap(grad(loss, argnums=(0, 1)))(gates, h0)
    for index in range(size):
        g, h = gates[index].clone().requires_grad_(), h0[index].clone().requires_grad_()
        expected_out, expected_h = qrnn_pool(g, h, **options)  # type: ignore[arg-type]
        torch.testing.assert_close(out[index], expected_out.detach())
        torch.testing.assert_close(h_n[index], expected_h.detach())
        loss(g, h).backward()
        torch.testing.assert_close(grads[0][index], g.grad)
        torch.testing.assert_close(grads[1][index], h.grad)


def test_vmap_runs_the_kernels_not_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under vmap (and one grad level) the ops batch by folding the mapped dims into the batch dim."""
    import torchqrnn.ops.forget_mult as forget_mult_op
    import torchqrnn.ops.qrnn_pool as qrnn_pool_op

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(forget_mult_op, "forget_mult_reference", refuse)
    monkeypatch.setattr(qrnn_pool_op, "qrnn_pool_reference", refuse)
    f, x, gates = torch.rand(3, 4, 2, 5), torch.randn(3, 4, 2, 5), torch.randn(3, 4, 2, 15)
    vmap(forget_mult)(f, x)
    vmap(grad(lambda f, x: forget_mult(f, x).sum()))(f, x)
    vmap(qrnn_pool)(gates)
    vmap(grad(lambda g: qrnn_pool(g)[0].sum()))(gates)
    qrnn = QRNN(5, 6, num_layers=2, window=[2, 1])
    with torch.no_grad():
        vmap(qrnn)(torch.randn(3, 7, 2, 5))
