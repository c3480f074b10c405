"""torchqrnn: Quasi-Recurrent Neural Networks for PyTorch.

``from torchqrnn import QRNN, QRNNLayer, ForgetMult`` works as it did with salesforce/pytorch-qrnn.
Importing this package compiles nothing and imports neither numba nor Triton; kernels load on first use.
"""

from __future__ import annotations

from .nn.forget_mult import ForgetMult
from .ops.forget_mult import forget_mult

__version__ = "0.3.0.dev0"

__all__ = ["ForgetMult", "__version__", "forget_mult"]
