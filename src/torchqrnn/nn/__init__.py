"""Modules built on the functional ops."""

from __future__ import annotations

from .forget_mult import ForgetMult

__all__ = ["ForgetMult"]
