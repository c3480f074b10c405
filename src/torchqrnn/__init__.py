"""torchqrnn: Quasi-Recurrent Neural Networks for PyTorch.

``from torchqrnn import QRNN, QRNNLayer, ForgetMult`` works as it did with salesforce/pytorch-qrnn, and so
do its module paths ``torchqrnn.qrnn`` and ``torchqrnn.forget_mult`` (the latter also names the function
:func:`forget_mult`: see :mod:`torchqrnn.forget_mult`).
Importing this package compiles nothing and imports neither numba nor Triton; kernels load on first use.
Deployment helpers (``torch.export``, ONNX) live in :mod:`torchqrnn.export`, imported on demand.
"""

from __future__ import annotations

from importlib import import_module as _import_module

# salesforce 0.2.1's module paths, imported first: importing the module torchqrnn.forget_mult binds the
# package attribute ``forget_mult``, which the function then takes back (see torchqrnn/forget_mult.py).
_import_module(".forget_mult", __name__)
_import_module(".qrnn", __name__)

from .nn import QRNN, ForgetMult, QRNNLayer  # noqa: E402
from .nn.stepper import Stepper  # noqa: E402
from .nn.streaming import StreamingQRNN  # noqa: E402
from .ops.forget_mult import forget_mult  # noqa: E402
from .ops.qrnn_pool import qrnn_pool  # noqa: E402

__version__ = "0.3.0.dev0"

__all__ = [
    "QRNN",
    "ForgetMult",
    "QRNNLayer",
    "Stepper",
    "StreamingQRNN",
    "__version__",
    "forget_mult",
    "qrnn_pool",
]
