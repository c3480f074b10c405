"""What the ForgetMult kernels' tests share: their inputs, and the error budget for half types (a kernel may
err at most twice as much as the plain loop run in the half dtype itself, both against float64:
flash-attention's rule)."""

from __future__ import annotations

import torch

from torchqrnn import forget_mult
from torchqrnn.ops.forget_mult import forget_mult_reference


def make_inputs(
    steps: int,
    batch: int,
    hidden: int,
    *,
    batch_first: bool = False,
    with_h0: bool = True,
    dtype: torch.dtype = torch.float32,
    requires_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    shape = (batch, steps, hidden) if batch_first else (steps, batch, hidden)
    f = torch.rand(shape, dtype=dtype).requires_grad_(requires_grad)
    x = torch.randn(shape, dtype=dtype).requires_grad_(requires_grad)
    h0 = torch.randn(batch, hidden, dtype=dtype).requires_grad_(requires_grad) if with_h0 else None
    return f, x, h0


def _plain_loop_same_dtype(f: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The naive loop run entirely in the input dtype."""
    h, outs = h0, []
    for f_t, x_t in zip(f.unbind(0), x.unbind(0), strict=True):
        h = f_t * x_t + (1 - f_t) * h
        outs.append(h)
    return torch.stack(outs)


def check_forget_mult_half_budget(backend: str, dtype: torch.dtype, steps: int, reverse: bool) -> None:
    """Outputs and every gradient of ``forget_mult`` on ``backend`` within the budget, in ``dtype``."""
    f, x, h0 = make_inputs(steps, 2, 33, dtype=dtype)
    assert h0 is not None
    out = forget_mult(f, x, h0, reverse=reverse, backend=backend)
    assert out.dtype == dtype
    weight = torch.randn(f.shape, dtype=dtype)
    grads = torch.autograd.grad((out * weight).sum(), (f, x, h0))
    assert all(g.dtype == dtype for g in grads)

    exact_inputs = [t.detach().double().requires_grad_() for t in (f, x, h0)]
    exact = forget_mult_reference(*exact_inputs, batch_first=False, reverse=reverse)
    exact_grads = torch.autograd.grad((exact * weight.double()).sum(), exact_inputs)

    flip = (lambda t: t.flip(0)) if reverse else (lambda t: t)
    plain_inputs = [t.detach().requires_grad_() for t in (f, x, h0)]
    plain = flip(_plain_loop_same_dtype(flip(plain_inputs[0]), flip(plain_inputs[1]), plain_inputs[2]))
    plain_grads = torch.autograd.grad((plain * weight).sum(), plain_inputs)

    for got, want, budget in zip((out, *grads), (exact, *exact_grads), (plain, *plain_grads), strict=True):
        error = (got.double() - want).abs().max().item()
        allowed = (budget.double() - want).abs().max().item()
        assert error <= 2 * allowed + 1e-6, (error, allowed)
