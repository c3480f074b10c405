"""Modules built on the functional ops."""

from __future__ import annotations

from .forget_mult import ForgetMult
from .layer import QRNNLayer
from .qrnn import QRNN

__all__ = ["QRNN", "ForgetMult", "QRNNLayer"]
