"""Peak memory of a CPU training step, read from glibc's allocator after every operator.

PyTorch keeps no allocator statistics on CPU, so this reads ``mallinfo2`` (bytes in use, heap and mmap)
after each operator the step dispatches, inside a ``TorchDispatchMode``; the peak over the step minus the
bytes in use when it dispatched its first operator is the step's peak. Kernels that allocate and free within
one operator are seen only through what they leave live, which is what the comparison needs: the tensors a
step keeps alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
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
    """The most bytes in use after any operator, and the bytes in use when the first one was dispatched."""

    def __init__(self, in_use: Callable[[], int]) -> None:
        super().__init__()
        self.in_use = in_use
        self.start: int | None = None
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.start is None:
            self.start = self.peak = self.in_use()
        result = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return result


def peak_bytes(step: Callable[[], object], repeats: int = 3) -> int | None:
    """Bytes in use at the step's peak above those in use when it dispatched its first operator; None off
    glibc.

    The baseline is taken at the first operator, not before the call: a training step first frees what the
    previous step left (``p.grad = None``), and those bytes are not the step's (measured from before the
    call, a step whose gradients outweigh its activations, as a small ``nn.LSTM``'s, came out at 0 MB), and
    the garbage collector runs first. The median of ``repeats`` steps after two warm-up steps: what happens
    once (a kernel's or a GEMM library's first-call caches made, or a warm-up's buffers released, which can
    come on the second or third call) is not the step's either.
    """
    in_use = _mallinfo2()
    if in_use is None:
        return None
    for _ in range(2):  # warm-up: first-call allocations (kernel caches, lazy modules) are not the step's
        step()
    peaks = []
    for _ in range(repeats):
        # The last step's garbage in reference cycles goes now, not when the collector happens to run in
        # the middle of this step (freeing megabytes that were never this step's, below its baseline)
        gc.collect()
        with _PeakTracker(in_use) as tracker:
            step()
        peaks.append(0 if tracker.start is None else tracker.peak - tracker.start)
    return max(int(statistics.median(peaks)), 0)
