"""salesforce/pytorch-qrnn 0.2.1's module ``torchqrnn.qrnn``: ``QRNN`` and ``QRNNLayer``.

The very classes of :mod:`torchqrnn` (``torchqrnn.qrnn.QRNN is torchqrnn.QRNN``), so code written as
``from torchqrnn.qrnn import QRNN, QRNNLayer`` runs unchanged and whole models pickled with salesforce's
package load (see :meth:`torchqrnn.QRNNLayer.__setstate__`).
"""

from __future__ import annotations

from .nn.layer import QRNNLayer
from .nn.qrnn import QRNN

__all__ = ["QRNN", "QRNNLayer"]
