"""torchqrnn: Quasi-Recurrent Neural Networks for PyTorch.

``from torchqrnn import QRNN, QRNNLayer, ForgetMult`` works as it did with salesforce/pytorch-qrnn.
Importing this package compiles nothing and imports neither numba nor Triton; kernels load on first use.
Deployment helpers (``torch.export``, ONNX) live in :mod:`torchqrnn.export`, imported on demand.
"""

from __future__ import annotations

from .nn import QRNN, ForgetMult, QRNNLayer
from .nn.streaming import StreamingQRNN
from .ops.forget_mult import forget_mult
from .ops.qrnn_pool import qrnn_pool

__version__ = "0.3.0.dev0"

__all__ = ["QRNN", "ForgetMult", "QRNNLayer", "StreamingQRNN", "__version__", "forget_mult", "qrnn_pool"]
