"""``extra_repr`` as torch.nn's modules write it: the positional sizes, then only options not at default."""

from __future__ import annotations

from typing import Any

from torch import nn


def options_repr(module: nn.Module, defaults: dict[str, Any], *positional: object) -> str:
    """``"3, 4, window=2"``: ``positional`` as given, then each option of ``module`` that differs from
    ``defaults``."""
    parts = [str(value) for value in positional]
    parts += [
        f"{name}={getattr(module, name)!r}"
        for name, default in defaults.items()
        if getattr(module, name) != default
    ]
    return ", ".join(parts)
