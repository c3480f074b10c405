"""``ForgetMult`` as a module, with salesforce/pytorch-qrnn's call signature."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.forget_mult import BACKENDS, forget_mult
from ._repr import options_repr


class ForgetMult(nn.Module):
    r"""Module form of :func:`torchqrnn.forget_mult`: ``h_t = f_t * x_t + (1 - f_t) * h_{t-1}``.

    ``forward(f, x, hidden_init=None, use_cuda=True)`` is salesforce's signature; ``use_cuda`` is accepted for
    compatibility and ignored (the tensors' device picks the kernel). As salesforce's, it takes ``f`` and
    ``x`` of shape ``(T, B, *)`` with any trailing dimensions, and ``hidden_init`` of shape ``(B, *)`` or
    ``(1, B, *)`` (a layer's ``h_n``).

    Args:
        batch_first: inputs are ``(B, T, H)`` instead of ``(T, B, H)``.
        reverse: run the recurrence from the last step to the first.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``, as :func:`torchqrnn.forget_mult`.
    """

    def __init__(self, *, batch_first: bool = False, reverse: bool = False, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"ForgetMult: expected backend to be one of {BACKENDS}, got {backend!r}")
        self.batch_first = batch_first
        self.reverse = reverse
        self.backend = backend

    def forward(
        self, f: Tensor, x: Tensor, hidden_init: Tensor | None = None, use_cuda: bool = True
    ) -> Tensor:
        return forget_mult(
            f, x, hidden_init, batch_first=self.batch_first, reverse=self.reverse, backend=self.backend
        )

    def extra_repr(self) -> str:
        return options_repr(self, {"batch_first": False, "reverse": False, "backend": "auto"})
