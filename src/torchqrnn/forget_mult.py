"""salesforce/pytorch-qrnn 0.2.1's module ``torchqrnn.forget_mult``: ``ForgetMult``, ``CPUForgetMult`` and
``GPUForgetMult``.

The package also has a *function* ``torchqrnn.forget_mult(f, x, h0=None, ...)``, under the same name. Both
work, in either import order, because the package imports this module before it binds the function:

- ``from torchqrnn import forget_mult`` and ``torchqrnn.forget_mult(f, x)``: the function;
- ``from torchqrnn.forget_mult import ForgetMult`` (and ``CPUForgetMult``, ``GPUForgetMult``): this module,
  found in ``sys.modules``;
- ``import torchqrnn.forget_mult as fm`` binds the package's attribute, the function; it carries this
  module's three names as attributes, so ``fm.ForgetMult`` works too.

``ForgetMult`` picks the kernel from the tensors' device (salesforce's ``use_cuda`` is accepted and
ignored); ``CPUForgetMult`` is salesforce's plain loop over time, on any device (the reference backend);
``GPUForgetMult`` is the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), with
salesforce's two call forms: ``GPUForgetMult()(f, x, hidden_init)`` and ``GPUForgetMult.apply(f, x,
hidden_init)``.
"""

from __future__ import annotations

from torch import Tensor

from .nn.forget_mult import ForgetMult
from .ops.forget_mult import forget_mult as _forget_mult

__all__ = ["CPUForgetMult", "ForgetMult", "GPUForgetMult"]


class CPUForgetMult(ForgetMult):
    """salesforce's ``CPUForgetMult``: the plain loop over time (``backend="reference"``), any device.

    ``forward(f, x, hidden_init=None)``, every step returned, ``(T, B, H)``."""

    def __init__(self) -> None:
        super().__init__(backend="reference")

    def forward(  # type: ignore[override]
        self, f: Tensor, x: Tensor, hidden_init: Tensor | None = None
    ) -> Tensor:
        return super().forward(f, x, hidden_init)


class GPUForgetMult:
    """salesforce's ``GPUForgetMult``, an autograd function there: the GPU kernel (``backend="triton"``),
    seq-first ``(T, B, H)``, differentiable as :func:`torchqrnn.forget_mult`.

    Called as salesforce's code called it: ``GPUForgetMult()(f, x, hidden_init)`` or
    ``GPUForgetMult.apply(f, x, hidden_init)``. (Not a module, as it was not one there.)"""

    @staticmethod
    def apply(f: Tensor, x: Tensor, hidden_init: Tensor | None = None) -> Tensor:
        return _forget_mult(f, x, hidden_init, backend="triton")

    def __call__(self, f: Tensor, x: Tensor, hidden_init: Tensor | None = None) -> Tensor:
        return self.apply(f, x, hidden_init)


# ``import torchqrnn.forget_mult as fm`` binds the function (the package's attribute): give it the names.
for _name in __all__:
    setattr(_forget_mult, _name, globals()[_name])
