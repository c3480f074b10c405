"""torchqrnn: Quasi-Recurrent Neural Networks for PyTorch.

``from torchqrnn import QRNN, QRNNLayer, ForgetMult`` works as it did with salesforce/pytorch-qrnn, and so
do its module paths ``torchqrnn.qrnn`` and ``torchqrnn.forget_mult`` (the latter also names the function
:func:`forget_mult`: see :mod:`torchqrnn.forget_mult`).
Importing this package compiles nothing and imports neither numba nor Triton; kernels load on first use.
Deployment helpers (``torch.export``, ONNX) live in :mod:`torchqrnn.export`, imported on demand.
"""

from __future__ import annotations

# salesforce 0.2.1's module paths. ``forget_mult`` is imported first as the module (its import binds the
# package attribute) and then rebound to the function just below: see torchqrnn/forget_mult.py.
from . import forget_mult, qrnn  # noqa: F401  (the modules torchqrnn.forget_mult and torchqrnn.qrnn)
from .nn import QRNN, ForgetMult, QRNNLayer
from .nn.streaming import StreamingQRNN
from .ops.forget_mult import forget_mult  # type: ignore[no-redef]  # noqa: F811  (the function wins)
from .ops.qrnn_pool import qrnn_pool

__version__ = "0.3.0.dev0"

__all__ = ["QRNN", "ForgetMult", "QRNNLayer", "StreamingQRNN", "__version__", "forget_mult", "qrnn_pool"]
