"""Timing on a noisy machine: candidates measured side by side, interleaved, ratios taken per round.

This VM's speed drifts by 2x within seconds, so a ratio of two medians taken minutes apart means little.
Every round here times each candidate once, back to back, in rotating order; the reported ratio is the
median over rounds of the per-round ratio, which cancels most of the drift.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .. import __version__ as torchqrnn_version


@dataclass
class Samples:
    """Per-call seconds of one candidate, one entry per round."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _calibrate(fn: Callable[[], object], min_seconds: float) -> int:
    fn()  # warm-up: first-call costs (compilation, allocation) are measured elsewhere
    reps, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or reps >= 1 << 16:
            return reps
        reps = max(reps * 2, int(reps * min_seconds / max(elapsed, 1e-9)))


def interleaved(
    candidates: dict[str, Callable[[], object]], *, rounds: int = 15, min_seconds: float = 0.02
) -> dict[str, Samples]:
    """Time every candidate once per round, in rotating order; each sample averages enough calls to last
    ``min_seconds``."""
    reps = {name: _calibrate(fn, min_seconds) for name, fn in candidates.items()}
    samples = {name: Samples() for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = candidates[name], reps[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].seconds.append((time.perf_counter() - start) / n)
    return samples


def ratio(numerator: Samples, denominator: Samples) -> float:
    """Median over rounds of numerator / denominator, both sampled in the same rounds."""
    return statistics.median(a / b for a, b in zip(numerator.seconds, denominator.seconds, strict=True))


class CopyBandwidth:
    """A large ``copy_`` between buffers written beforehand, to time beside kernels in the same rounds.

    Both buffers are filled first: a copy from an untouched ``torch.empty`` reads the kernel's shared zero
    page and reports several times the real bandwidth.
    """

    def __init__(self, megabytes: int = 128) -> None:
        n = megabytes * (1 << 20) // 4
        self.src, self.dst = torch.rand(n), torch.rand(n)
        self.bytes_moved = 2 * n * 4  # read + write

    def __call__(self) -> None:
        self.dst.copy_(self.src)

    def floor_ratio(self, kernel: Samples, copy: Samples, kernel_bytes: int) -> float:
        """Median over rounds of kernel time / (kernel_bytes at that round's copy bandwidth)."""
        return statistics.median(
            k / (kernel_bytes * c / self.bytes_moved)
            for k, c in zip(kernel.seconds, copy.seconds, strict=True)
        )


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("numba", "triton"):  # the installed versions, without importing them
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    versions["torchqrnn"] = torchqrnn_version
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": versions,
    }


def run_fresh_python(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a new interpreter and return its stdout (for first-call and cache measurements)."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=merged
    ).stdout


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` other processes spinning on the CPU for as long as the block runs: a shared machine's load
    (``--load N``). They are killed on the way out, however the block ends."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        time.sleep(0.5 if count else 0.0)  # let them reach the cores
        yield
    finally:
        for process in spinners:
            process.kill()
        for process in spinners:
            process.wait()


def latencies(
    candidates: dict[str, Callable[[], object]], *, calls: int = 2000, block: int = 50
) -> dict[str, list[float]]:
    """Seconds of each single call, ``calls`` per candidate, in interleaved blocks of ``block`` calls: the
    distribution (median, p99) of a latency, where :func:`interleaved` averages it away."""
    for fn in candidates.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    clock = time.perf_counter
    for _ in range(max(1, calls // block)):
        for name, fn in candidates.items():
            out = seconds[name]
            for _ in range(block):
                start = clock()
                fn()
                out.append(clock() - start)
    return seconds


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
