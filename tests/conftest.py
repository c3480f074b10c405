"""Shared test setup: fresh buffers are poisoned with NaN, so an output a kernel forgets to write fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("empty", "empty_like", "empty_strided"):
        original = getattr(torch, name)

        def poisoned(*args, _original=original, **kwargs):
            t = _original(*args, **kwargs)
            if t.is_floating_point() and t.device.type not in ("meta",) and t.numel():
                with torch.no_grad():
                    t.fill_(float("nan"))
            return t

        monkeypatch.setattr(torch, name, poisoned)
    yield


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
