"""Registering an op's ``scan`` decomposition, and keeping Inductor on the op's own kernels.

Each op's decomposition (``torchqrnn/ops/*/scan.py``) goes into torch's global decomposition table, which
``torch.onnx.export`` and :func:`torchqrnn.export.decompose_ops` apply. Inductor must not: it runs the op
itself, as a fallback kernel (the fused CPU or Triton kernels, not an unrolled ``scan``). Inductor makes
that fallback on its own, but when the environment variable ``CI`` is set (GitHub Actions, GitLab and most
CI services set it) its implicit fallback raises for any op with a registered decomposition ("a
decomposition exists, we should switch to it"), so ``torch.compile`` of a QRNN failed on every CI machine.

:func:`register_decomposition` therefore also registers the op's fallback with Inductor explicitly,
exactly as Inductor's implicit one (the layout constraint its tags give), marked as overriding the
decomposition. Importing Inductor's lowering module costs over a second, so this waits for it: it runs at
once if the module is loaded, and otherwise when something first imports it (a one-time import hook).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

__all__ = ["INDUCTOR_LOWERING", "register_decomposition"]

INDUCTOR_LOWERING = "torch._inductor.lowering"

_FALLBACK_OPS: list[torch._ops.OpOverload] = []  # every op given a decomposition here, in order


def register_decomposition(
    op: torch._ops.OpOverload, decomposition: Callable[..., Any], fake: Callable[..., Any]
) -> None:
    """Register ``decomposition`` as ``op``'s (``fake`` as its meta function), and ``op`` as an Inductor
    fallback kernel (now, or once Inductor's lowering module is imported)."""
    torch._decomp.register_decomposition(op)(decomposition)
    torch._decomp.register_decomposition(op, type="meta")(fake)
    _FALLBACK_OPS.append(op)
    lowering = sys.modules.get(INDUCTOR_LOWERING)
    if lowering is not None:
        _register_fallbacks(lowering, [op])
    else:
        _AfterLoweringImport.install()


def _register_fallbacks(lowering: ModuleType, ops: Sequence[torch._ops.OpOverload]) -> None:
    """``ops`` as Inductor fallback kernels, each with the layout constraint its tags give (the default
    for a custom op without one), as Inductor's implicit fallback would make them."""
    try:
        from torch._library.utils import get_layout_constraint_tag

        for op in ops:
            if op in lowering.lowerings:
                continue
            constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
            lowering.make_fallback(op, layout_constraint=constraint, warn=False, override_decomp=True)
    except (
        AttributeError,
        ImportError,
        TypeError,
    ) as error:  # Inductor's internals moved: never break its import
        warnings.warn(
            f"torchqrnn could not register its ops as Inductor fallback kernels ({error!r}); Inductor makes "
            "them implicitly, which raises where the environment variable CI is set",
            RuntimeWarning,
            stacklevel=2,
        )


class _AfterLoweringImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A one-time import hook: loads Inductor's lowering module as usual, then registers the fallbacks."""

    _installed: _AfterLoweringImport | None = None

    def __init__(self) -> None:
        self._loader: importlib.abc.Loader | None = None  # the module's own loader, once found

    @classmethod
    def install(cls) -> None:
        if cls._installed is None:
            cls._installed = cls()
            sys.meta_path.insert(0, cls._installed)

    def _remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        type(self)._installed = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != INDUCTOR_LOWERING:
            return None
        self._remove()  # whatever happens below, once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader, self._loader = self, spec.loader
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        assert self._loader is not None
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        assert self._loader is not None
        # the module keeps its own loader, as if no hook had run (inspect and linecache read it)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register_fallbacks(module, _FALLBACK_OPS)
