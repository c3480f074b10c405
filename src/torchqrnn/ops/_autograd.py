"""What the kernels' autograd does where a kernel cannot: double backward, and the ``torch.func`` transforms.

The kernels' backward passes compute first-order gradients only. Two cases need more, and both get it from
an op's differentiable reference (plain PyTorch ops), never a silently cut graph:

- a backward that itself builds a graph (``create_graph=True``: gradient penalties, Hessian-vector products).
  The backward of an ``autograd.Function`` then runs with grad mode on: :func:`reference_backward` recomputes
  the op by its reference from the saved inputs and differentiates that, so the gradients it returns are
  differentiable in the inputs and in the incoming gradients;
- ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ``jvp``, per-sample gradients), under which the
  kernels (which read raw memory) cannot see through the transforms' wrapped tensors, nor forward-mode AD
  (``torch.autograd.forward_ad``) through dual tensors: the dispatchers run the reference there
  (:func:`transformed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad


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
