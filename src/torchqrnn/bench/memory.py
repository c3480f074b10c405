"""Peak memory of a CPU training step, read from glibc's allocator after every operator.

PyTorch keeps no allocator statistics on CPU, so this reads ``mallinfo2`` (bytes in use, heap and mmap)
after each operator the step dispatches, inside a ``TorchDispatchMode``; the peak over the step minus the
bytes in use before it is the step's peak. Kernels that allocate and free within one operator are seen only
through what they leave live, which is what the comparison needs: the tensors a step keeps alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
    ] + [(name, ctypes.c_size_t) for name in ("fordblks", "keepcost")]


def _mallinfo2() -> Callable[[], int] | None:
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    libc = ctypes.CDLL(path)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)  # heap chunks in use + mmapped chunks

    return in_use


class _PeakTracker(TorchDispatchMode):
    def __init__(self, in_use: Callable[[], int]) -> None:
        super().__init__()
        self.in_use = in_use
        self.peak = in_use()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return result


def peak_bytes(step: Callable[[], object]) -> int | None:
    """Bytes in use at the step's peak above those in use before it; None off glibc."""
    in_use = _mallinfo2()
    if in_use is None:
        return None
    step()  # warm-up: first-call allocations (kernel caches, lazy modules) are not the step's
    before = in_use()
    with _PeakTracker(in_use) as tracker:
        step()
    return max(tracker.peak - before, 0)
