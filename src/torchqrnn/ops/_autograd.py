"""What the kernels' autograd does where a kernel cannot: double backward, and the ``torch.func`` transforms.

The kernels' backward passes compute first-order gradients only. Two cases need more, and both get it from
an op's differentiable reference (plain PyTorch ops), never a silently cut graph:

- a backward that itself builds a graph (``create_graph=True``: gradient penalties, Hessian-vector products).
  The backward of an ``autograd.Function`` then runs with grad mode on: :func:`reference_backward` recomputes
  the op by its reference from the saved inputs and differentiates that, so the gradients it returns are
  differentiable in the inputs and in the incoming gradients;
- ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``jvp``, per-sample gradients), whose wrapped
  tensors the kernels (which read raw memory) cannot see through. Under ``vmap``, with at most one ``grad``
  level inside (per-sample gradients), the ops' ``autograd.Function`` s in ``setup_context`` form run the
  kernels through batching rules that fold the mapped dims into the batch dim (:func:`foldable`,
  :func:`fold`): exact, since batch rows are independent. Other transforms, and forward-mode AD
  (``torch.autograd.forward_ad``, dual tensors whose tangents a kernel would drop), run the reference
  (:func:`transformed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad


def foldable() -> bool:
    """Whether the active ``torch.func`` transforms are ``vmap``s around at most one ``grad`` / ``vjp``
    level: there the kernels run through the ops' batching rules (:func:`fold`), which merge the mapped
    dims into the batch dim. Other mixes (``jvp``, nested ``grad``, forward-mode AD) run the reference."""
    if forward_ad._current_level >= 0:  # dual tensors: the kernels have no forward-mode derivative
        return False
    stack = torch._C._functorch.get_interpreter_stack() or []
    kinds = [interpreter.key() for interpreter in stack]
    Transform = torch._C._functorch.TransformType
    return (
        all(kind in (Transform.Vmap, Transform.Grad) for kind in kinds) and kinds.count(Transform.Grad) <= 1
    )


def fold(t: Tensor | None, mapped: int | None, size: int, batch_dim: int) -> Tensor | None:
    """``t`` (a ``vmap`` rule's unwrapped input, its mapped dim at ``mapped``, None if unmapped) with the
    ``size`` mapped copies merged into its batch dim ``batch_dim`` (of the per-sample shape), copy-major:
    ``(..., B, ...)`` per sample becomes ``(..., size * B, ...)``."""
    if t is None:
        return None
    t = t.expand(size, *t.shape) if mapped is None else t.movedim(mapped, 0)
    t = t.movedim(0, batch_dim)  # (..., size, B, ...)
    return t.flatten(batch_dim, batch_dim + 1)


def unfold(t: Tensor, size: int, batch_dim: int) -> Tensor:
    """The inverse of :func:`fold` for an output: ``(..., size * B, ...)`` to ``(..., size, B, ...)``, the
    mapped dim at ``batch_dim`` (what a ``vmap`` rule returns as its out dim)."""
    return t.unflatten(batch_dim, (size, -1))


class BackwardUnderTransforms(torch.autograd.Function):
    """Base of the ops' backward kernels as ``autograd.Function`` s for ``torch.func`` (each adds its
    ``forward`` and its batching rule ``vmap``): first order only, which is all :func:`foldable` lets them
    be asked for (nested ``grad`` levels run the reference)."""

    op = "torchqrnn"

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @classmethod
    def backward(cls, ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(
            f"{cls.op}: a second derivative inside torch.func transforms needs backend='reference'"
        )


def transformed() -> bool:
    """Whether a transform the kernels cannot see through is active around this call: a ``torch.func``
    transform (``vmap``, ``grad``, ``jvp``, ...) or a forward-mode AD level (``torch.autograd.forward_ad``,
    whose dual tensors' tangents a kernel would drop)."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def reference_backward(
    reference: Callable[[], Tensor | Sequence[Tensor]],
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
    grads: Sequence[Tensor | None],
) -> list[Tensor | None]:
    """The gradients of ``reference()``'s outputs (weighted by ``grads``) for each of ``inputs`` that
    ``needs`` one, as a graph: ``reference`` recomputes the op from ``inputs`` (the saved tensors, whose
    graph this extends). None where no gradient is needed; zeros where an output does not depend on it."""
    pairs = zip(inputs, needs, strict=False)
    wanted = [(i, t) for i, (t, need) in enumerate(pairs) if need and t is not None]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return result
    with torch.enable_grad():
        outputs = reference()
    outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    used = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
    computed = torch.autograd.grad(
        [o for o, _ in used],
        [t for _, t in wanted],
        [g for _, g in used],
        create_graph=True,
        allow_unused=True,
    )
    for (i, target), grad in zip(wanted, computed, strict=True):
        result[i] = torch.zeros_like(target) if grad is None else grad
    return result
