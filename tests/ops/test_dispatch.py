"""The one dispatcher: which backend runs where, and what an unavailable one says."""

from __future__ import annotations

import importlib

import pytest
import torch

from torchqrnn.ops import _dispatch
from torchqrnn.ops._dispatch import kernel_module, resolve_backend


def test_auto_follows_the_device() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("auto", torch.device("meta")) == "reference"  # MPS, XPU, ...: the plain loop
    assert resolve_backend("reference", torch.device("cpu")) == "reference"


def test_cuda_without_a_triton_kernel_warns_and_runs_the_reference() -> None:
    with pytest.warns(UserWarning, match="this op has no Triton kernel yet"):
        assert resolve_backend("auto", torch.device("cuda"), kernels=("cpu",)) == "reference"


def test_a_backend_the_op_lacks_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"backend='triton' is not available for this op; it has \('cpu',\)"):
        resolve_backend("triton", torch.device("cpu"), kernels=("cpu",))


def test_a_broken_kernel_module_is_not_reported_as_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba is installed, so a failing import of our module must surface as itself, not as 'pip install'."""

    def broken(name: str):
        raise ImportError(f"cannot import name 'x' from {name}")

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.setattr(_dispatch, "_kernel_modules", {})
    with pytest.raises(ImportError, match=r"cannot import name 'x' from torchqrnn\.ops\.forget_mult\.cpu"):
        kernel_module("torchqrnn.ops.forget_mult", "cpu")
    with pytest.raises(ImportError, match=r"torchqrnn\.ops\.forget_mult\.elsewhere"):
        kernel_module("torchqrnn.ops.forget_mult", "elsewhere")
