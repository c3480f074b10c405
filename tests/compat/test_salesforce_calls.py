"""The call forms salesforce/pytorch-qrnn 0.2.1 accepted, written as its users write them.

salesforce's ``CPUForgetMult`` split ``f * x`` over time and added ``(1 - f_t) * h`` with broadcasting, so it
took a ``hidden_init`` of shape ``(B, *)`` or ``(1, B, *)`` (a layer's ``h_n``) and tensors with any trailing
dimensions; its ``QRNN.forward`` indexed ``hidden[i]`` per layer, so a list of per-layer states worked as
well as a tensor. Each is checked here against a float64 loop written from the equation, values and
gradients, on every backend (Triton in its CPU interpreter).
"""

from __future__ import annotations

import copy
import os

# Before anything imports triton: the kernels are built for the interpreter when their module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from torchqrnn import QRNN, ForgetMult, QRNNLayer, forget_mult
from torchqrnn.ops._dispatch import kernel_module

from ..nn.reference import reference_qrnn

BACKENDS = ["auto", "reference", "cpu", "triton"]


def loop64(f: Tensor, x: Tensor, h0: Tensor | None, *, time_dim: int, reverse: bool) -> Tensor:
    """``h_t = f_t x_t + (1 - f_t) h_{t-1}`` step by step in float64, for tensors of any rank."""
    f, x = f.double(), x.double()
    step = x.select(time_dim, 0).shape  # (B, *)
    h = x.new_zeros(step) if h0 is None else h0.double().reshape(step)  # (1, B, *) is (B, *)
    steps = range(x.shape[time_dim] - 1, -1, -1) if reverse else range(x.shape[time_dim])
    out: list[Tensor] = [h] * x.shape[time_dim]
    for t in steps:
        h = f.select(time_dim, t) * x.select(time_dim, t) + (1 - f.select(time_dim, t)) * h
        out[t] = h
    return torch.stack(out, time_dim)


def assert_matches_loop(
    run: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    shape: tuple[int, ...],
    h0_shape: tuple[int, ...] | None,
    *,
    time_dim: int = 0,
    reverse: bool = False,
) -> None:
    """``run(f, x, h0)`` against :func:`loop64`: outputs, and the gradients of ``f``, ``x`` and ``h0``."""
    f = torch.rand(shape, requires_grad=True)
    x = torch.randn(shape, requires_grad=True)
    h0 = None if h0_shape is None else torch.randn(h0_shape, requires_grad=True)
    inputs = [t for t in (f, x, h0) if t is not None]
    weight = torch.randn(shape, dtype=torch.float64)

    out = run(f, x, h0)
    assert out.shape == shape and out.dtype == torch.float32
    grads = torch.autograd.grad((out.double() * weight).sum(), inputs)

    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    exact_h0 = exact_inputs[2] if h0 is not None else None
    exact = loop64(exact_inputs[0], exact_inputs[1], exact_h0, time_dim=time_dim, reverse=reverse)
    exact_grads = torch.autograd.grad((exact * weight).sum(), exact_inputs)

    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)
    for got, expected, given in zip(grads, exact_grads, inputs, strict=True):
        assert got.shape == given.shape
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# --- ForgetMult()(f, x, hidden) with a layer's h_n --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("h0_shape", [(3, 5), (1, 3, 5), None], ids=["B,H", "1,B,H", "none"])
def test_forget_mult_module_takes_a_layers_h_n(backend: str, reverse: bool, h0_shape: tuple | None) -> None:
    module = ForgetMult(reverse=reverse, backend=backend)
    if h0_shape is None:
        run = lambda f, x, h0: module(f, x)
    else:
        run = lambda f, x, h0: module(f, x, h0, use_cuda=False)
    assert_matches_loop(run, (6, 3, 5), h0_shape, reverse=reverse)


def test_a_layers_h_n_feeds_forget_mult_directly() -> None:
    """What third-party layers do: run a QRNNLayer, then carry its ``h_n`` into their own ForgetMult."""
    layer = QRNNLayer(4, 5)
    _, h_n = layer(torch.randn(3, 2, 4))
    assert h_n.shape == (1, 2, 5)
    f, x = torch.rand(6, 2, 5), torch.randn(6, 2, 5)
    torch.testing.assert_close(ForgetMult()(f, x, h_n), ForgetMult()(f, x, h_n[0]))


# --- any trailing dimensions ------------------------------------------------------------------------------


TRAILING = {"C,F": (2, 5), "C,D,F": (2, 1, 3), "F": (4,)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trailing", TRAILING)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("h0_form", ["B,*", "1,B,*", "none"])
def test_forget_mult_on_any_trailing_dimensions(
    backend: str, trailing: str, reverse: bool, h0_form: str
) -> None:
    rest = TRAILING[trailing]
    h0_shape = {"B,*": (3, *rest), "1,B,*": (1, 3, *rest), "none": None}[h0_form]
    assert_matches_loop(
        lambda f, x, h0: forget_mult(f, x, h0, reverse=reverse, backend=backend),
        (6, 3, *rest),
        h0_shape,
        reverse=reverse,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_batch_first_with_trailing_dimensions(backend: str, reverse: bool) -> None:
    module = ForgetMult(batch_first=True, reverse=reverse, backend=backend)
    assert_matches_loop(
        lambda f, x, h0: module(f, x, h0), (3, 6, 2, 5), (1, 3, 2, 5), time_dim=1, reverse=reverse
    )


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_with_trailing_dimensions(backend: str) -> None:
    def run(f: Tensor, x: Tensor, h0: Tensor) -> Tensor:
        return forget_mult(f, x, h0, reverse=True, backend=backend)

    shape = (4, 2, 3, 2)
    inputs = (
        torch.rand(shape, dtype=torch.float64, requires_grad=True),
        torch.randn(shape, dtype=torch.float64, requires_grad=True),
        torch.randn(1, *shape[1:], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_trailing_dimensions_that_cannot_be_merged(backend: str) -> None:
    """A transposed feature block has no flat view: it is copied, and the result is still right."""
    base_f, base_x = torch.rand(6, 3, 5, 2), torch.randn(6, 3, 5, 2)
    f, x = base_f.transpose(2, 3), base_x.transpose(2, 3)  # (6, 3, 2, 5), not mergeable
    h0 = torch.randn(3, 2, 5)
    expected = loop64(f, x, h0, time_dim=0, reverse=False)
    torch.testing.assert_close(forget_mult(f, x, h0, backend=backend).double(), expected)


@pytest.fixture
def kernel_arguments(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[tuple[Tensor, Tensor]]]]:
    """Records the ``(f, x)`` the chosen backend's kernel is handed."""
    backend = request.param
    module = kernel_module("torchqrnn.ops.forget_mult", backend)
    seen: list[tuple[Tensor, Tensor]] = []
    original = module.forward

    def recording(f: Tensor, x: Tensor, *rest: object) -> None:
        seen.append((f, x))
        original(f, x, *rest)

    module.forward = recording
    try:
        yield backend, seen
    finally:
        module.forward = original


@pytest.mark.parametrize("kernel_arguments", ["cpu", "triton"], indirect=True)
@pytest.mark.parametrize("batch_first", [False, True])
def test_the_kernels_see_a_flat_view_not_a_copy(
    kernel_arguments: tuple[str, list[tuple[Tensor, Tensor]]], batch_first: bool
) -> None:
    backend, seen = kernel_arguments
    shape = (3, 6, 2, 5) if batch_first else (6, 3, 2, 5)
    f, x = torch.rand(shape), torch.randn(shape)
    forget_mult(f, x, torch.randn(3, 2, 5), batch_first=batch_first, backend=backend)
    ((kernel_f, kernel_x),) = seen
    assert kernel_f.shape == kernel_x.shape == (6, 3, 10)  # time-major, features flattened
    assert kernel_f.data_ptr() == f.data_ptr() and kernel_x.data_ptr() == x.data_ptr()


def test_errors_name_both_state_shapes() -> None:
    f = x = torch.ones(6, 3, 2, 5)
    with pytest.raises(ValueError, match=r"h0 of shape \(3, 2, 5\) or \(1, 3, 2, 5\) .* got \(2, 3, 2, 5\)"):
        forget_mult(f, x, torch.ones(2, 3, 2, 5))
    with pytest.raises(ValueError, match=r"h0 of shape \(3, 2, 5\) or \(1, 3, 2, 5\) .* got \(3, 10\)"):
        forget_mult(f, x, torch.ones(3, 10))  # the flat view is internal: h0 follows x's own shape
    with pytest.raises(ValueError, match=r"got \(1, 2, 2, 5\)"):  # the shape as given
        forget_mult(f, x, torch.ones(1, 2, 2, 5))


# --- QRNN(...)(x, [h_layer0, h_layer1]) -------------------------------------------------------------------


@pytest.mark.parametrize("form", ["list of (1, B, H)", "list of (B, H)", "tuple, mixed"])
def test_qrnn_takes_a_list_of_per_layer_states(form: str) -> None:
    qrnn = QRNN(4, 6, num_layers=2, window=2, dropout=0.3).eval()
    x = torch.randn(7, 3, 4)
    states = [torch.randn(1, 3, 6, requires_grad=True), torch.randn(1, 3, 6, requires_grad=True)]
    given: list[Tensor] | tuple[Tensor, ...] = states
    if form == "list of (B, H)":
        given = [s[0] for s in states]
    elif form == "tuple, mixed":
        given = (states[0], states[1][0])
    output, hidden = qrnn(x, given)
    assert output.shape == (7, 3, 6) and hidden.shape == (2, 3, 6)
    weight = torch.randn(7, 3, 6)
    grads = torch.autograd.grad((output * weight).sum() + hidden.square().sum(), states)

    exact_qrnn = copy.deepcopy(qrnn).double()
    exact_states = [s.detach().double().requires_grad_() for s in states]
    exact_output, exact_hidden = reference_qrnn(exact_qrnn, x.double(), torch.cat(exact_states))
    exact_grads = torch.autograd.grad(
        (exact_output * weight.double()).sum() + exact_hidden.square().sum(), exact_states
    )
    torch.testing.assert_close(output.double(), exact_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.double(), exact_hidden, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, exact_grads, strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_per_layer_states_from_the_layers_themselves() -> None:
    """salesforce's habit: keep each layer's ``h_n`` in a list and hand the list to the next call."""
    qrnn = QRNN(4, 5, num_layers=2)
    x1, x2 = torch.randn(3, 2, 4), torch.randn(4, 2, 4)
    _, hidden = qrnn(x1)
    per_layer = [hidden[i : i + 1] for i in range(2)]  # (1, B, H) each, as QRNNLayer returns them
    torch.testing.assert_close(qrnn(x2, per_layer)[0], qrnn(x2, hidden)[0])


@pytest.mark.parametrize(
    ("states", "error", "pattern"),
    [
        (lambda: [torch.zeros(3, 6)], ValueError, r"one state per layer and direction \(2\), got 1"),
        (lambda: [torch.zeros(3, 6), "h"], TypeError, r"h0\[1\] to be a Tensor, got str"),
        (
            lambda: [torch.zeros(3, 6), torch.zeros(2, 6)],
            RuntimeError,
            r"hidden size \(3, 6\) or \(1, 3, 6\) for h0\[1\], got \(2, 6\)",
        ),
        (
            lambda: [torch.zeros(3, 6), torch.zeros(3, 6, dtype=torch.float64)],
            RuntimeError,
            r"h0\[1\] of dtype torch.float32 on cpu .* got torch.float64",
        ),
    ],
)
def test_bad_per_layer_states_are_named(states, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        QRNN(4, 6, num_layers=2)(torch.randn(7, 3, 4), states())
