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


# The per-round ratios of one figure agree within this factor (largest / smallest) on a quiet machine; wider,
# some rounds ran while something else had the cores, and their median can land anywhere (a figure that
# cannot be, as a QRNN step at 0.01x the matrix-vector product it contains).
STEADY_SPREAD = 1.5


class Ratio(float):
    """A ratio of two candidates timed in the same rounds: its value is the median of the per-round ratios,
    ``spread`` their largest over their smallest (1.0: every round agreed). A float everywhere else (JSON,
    arithmetic, ``min``)."""

    spread: float

    def __new__(cls, value: float, spread: float = 1.0) -> Ratio:
        obj = super().__new__(cls, value)
        obj.spread = spread
        return obj

    @property
    def steady(self) -> bool:
        return self.spread <= STEADY_SPREAD


def ratio(numerator: Samples, denominator: Samples) -> Ratio:
    """Median over rounds of numerator / denominator, both sampled in the same rounds, with its spread."""
    per_round = [a / b for a, b in zip(numerator.seconds, denominator.seconds, strict=True)]
    return Ratio(statistics.median(per_round), max(per_round) / min(per_round))


def spread(samples: dict[str, Samples]) -> float:
    """How far the rounds of one interleaved measurement disagree: the widest spread of any candidate's
    per-round ratio to the first candidate (1.0 for a single candidate)."""
    first, *others = samples.values()
    return max([ratio(other, first).spread for other in others], default=1.0)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, ours included), where the system has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def others_load(load: float, threads: int, cpus: int) -> float:
    """The part of a load average that is not this benchmark's own ``threads`` (at most one per CPU)."""
    return max(load - min(threads, cpus), 0.0)


def machine_busy(load: float | None, threads: int, cpus: int) -> bool:
    """Other processes kept at least one CPU busy (a quarter of them on large machines), on average."""
    return load is not None and others_load(load, threads, cpus) >= max(1.0, 0.25 * cpus)


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
